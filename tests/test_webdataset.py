"""WebDataset tar shards: written from the real coco_mini captions, read back exactly, streamed per rank with a
seeded shuffle buffer, and trained on by `train clip --shards` with exact resume."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest
import torch

from regionprompt.cli import main
from regionprompt.data.captions import read_captions
from regionprompt.data.webdataset import ShardStream, find_shards, iter_samples, shard_sizes
from regionprompt.train.clip_pretrain import ClipPretrainConfig, train_clip
from regionprompt.vl.checkpoints import load_checkpoint

CAPTIONS = "coco_mini/annotations/captions_val2017_all159images.json"


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    assert main(["data", "shard", str(shared_data / CAPTIONS), "--images", str(shared_data / "coco_mini/val2017"),
                 "--out", str(out), "--samples-per-shard", "40"]) == 0
    return out


def test_shards_hold_every_captioned_photo_once_with_its_bytes_and_captions(shards, shared_data, capsys):
    files = find_shards(shards)
    assert [f.name for f in files] == [f"shard-0000{i}.tar" for i in range(4)] and shard_sizes(files) == [40, 40, 40, 39]
    source = {img.file_name: img for img in read_captions(shared_data / CAPTIONS).data.images}
    seen = {}
    for sample in (s for f in files for s in iter_samples(f)):
        name = sample.meta["file_name"]
        assert sample.image == (shared_data / "coco_mini/val2017" / name).read_bytes()
        assert sample.captions == source[name].captions and sample.meta["id"] == source[name].id
        seen[sample.key] = name
    assert len(seen) == len(set(seen.values())) == len(source) == 159
    with tarfile.open(files[0]) as tar:  # the img2dataset layout: KEY.jpg, KEY.txt, KEY.json
        names = tar.getnames()[:3]
    assert names == ["000000000.jpg", "000000000.txt", "000000000.json"]
    # Deterministic: writing again gives the same bytes (and keeps the files).
    before = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    assert main(["data", "shard", str(shared_data / CAPTIONS), "--images", str(shared_data / "coco_mini/val2017"),
                 "--out", str(shards), "--samples-per-shard", "40"]) == 0
    assert [hashlib.sha256(f.read_bytes()).hexdigest() for f in files] == before
    assert [e["sha256"] for e in json.loads((shards / "shards.json").read_text())["shards"]] == before
    assert "wrote 159 images with 795 captions in 4 shards" in capsys.readouterr().out


def test_foreign_shards_with_text_captions_folders_and_links(tmp_path):
    path = tmp_path / "foreign.tar"
    with tarfile.open(path, "w") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("part/a1.jpg", b"jpeg-a")
        add("part/a1.txt", b" a red bus \n")
        link = tarfile.TarInfo("part/b2.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        add("part/b2.txt", b"a link, not an image")
        add("part/c3.png", b"png-c")  # no caption: skipped
        add("part/d4.jpg", b"jpeg-d")
        add("part/d4.json", json.dumps({"captions": ["one", "two"]}).encode())
    samples = list(iter_samples(path))
    assert [(s.key, s.image, s.captions) for s in samples] == [("a1", b"jpeg-a", ("a red bus",)),
                                                               ("d4", b"jpeg-d", ("one", "two"))]
    assert shard_sizes([path]) == [2]


def test_rank_streams_split_the_data_and_replay_from_any_sample(shards):
    files = find_shards(shards)
    for world in (2, 8):  # by shard (4 shards, 2 ranks) and by sample (8 ranks > 4 shards)
        covered = []
        for rank in range(world):
            stream = ShardStream(files, seed=3, rank=rank, world_size=world, buffer=16)
            epoch = [s.key for s in stream._epoch(0)]  # this rank's part of epoch 0, in file order
            first = [s.key for _, s in zip(range(len(epoch) + 20), stream.samples())]
            assert sorted(first[: len(epoch)]) == sorted(epoch)  # the buffer shuffles within the epoch
            assert [s.key for _, s in zip(range(20), stream.samples(skip=len(epoch)))] == first[len(epoch) :]
            covered += epoch
        assert sorted(covered) == sorted(set(covered)) and len(covered) == 159  # each photo once per epoch
    plain = [s.key for _, s in zip(range(159), ShardStream(files, seed=3, buffer=1).samples())]
    shuffled = [s.key for _, s in zip(range(159), ShardStream(files, seed=3, buffer=64).samples())]
    assert sorted(plain) == sorted(shuffled) and plain != shuffled


@pytest.mark.slow
def test_train_clip_on_real_photo_shards_resumes_exactly(shards, tmp_path):
    torch.set_num_threads(1)
    config = ClipPretrainConfig(card="RN-tiny", text="clip", image_size=32, batch_size=16, steps=6, warmup_steps=2,
                                lr=1e-3, concept_weight=0.0, amp=False)
    straight = train_clip(config, tmp_path / "straight", shards=shards, shuffle_buffer=32)
    assert straight.finished and torch.isfinite(torch.tensor(straight.metrics["loss"]))
    train_clip(config, tmp_path / "resumed", shards=shards, shuffle_buffer=32, max_steps_this_run=4)
    resumed = train_clip(config, tmp_path / "resumed", shards=shards, shuffle_buffer=32)
    assert resumed.resumed_from == 4
    a = load_checkpoint(tmp_path / "straight" / "model").state_dict()
    b = load_checkpoint(tmp_path / "resumed" / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    recipe = json.loads((tmp_path / "straight" / "recipe.json").read_text())
    assert recipe["recipe"]["shards"] == [f"shard-0000{i}.tar" for i in range(4)]
    assert recipe["data"].startswith("159 image-caption pairs in 4 WebDataset shards")
    with pytest.raises(Exception, match="concept-weight 0"):
        train_clip(ClipPretrainConfig(concept_weight=1.0), tmp_path / "refused", shards=shards)
