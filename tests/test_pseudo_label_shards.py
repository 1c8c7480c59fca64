"""`pseudo-label --shard i/n`: independent jobs label disjoint blocks into parts/, a run without a shard merges
them into the store an unsharded run writes (every image once), and a killed shard job resumes."""

from __future__ import annotations

import pytest
from test_pseudo_labels import CONFIG, _KilledAt, _run, _same_contents, full_run, world  # noqa: F401 (fixtures)

from regionprompt.cli import main
from regionprompt.regionclip.label_store import PARTS_DIR, PseudoLabels
from regionprompt.regionclip.pseudo_labels import pseudo_label
from regionprompt.sharding import Shard


def test_shard_jobs_merge_into_the_unsharded_store(world, full_run, tmp_path):  # noqa: F811
    _, cache, teacher, names, source = world
    out = tmp_path / "sharded"
    # Blocks of 3 images: 0-2, 3-5, 6-8, 9 -> shard 0/2 takes blocks 0 and 2, shard 1/2 blocks 1 and 3.
    with pytest.raises(KeyboardInterrupt):  # killed inside its second block
        pseudo_label(teacher, _KilledAt(source, 5), cache, names, out, CONFIG, proposal_id=source.identity,
                     shard=Shard(0, 2))
    one = _run(world, out, shard=Shard(1, 2))
    assert one.images == 4 and one.total_images == 0  # nothing merged yet
    again = _run(world, out, shard=Shard(0, 2))  # resumed: only its unfinished block
    assert (again.first_image, again.stop_image, again.images) == (6, 9, 3)
    parts = sorted(p.name for p in (out / PARTS_DIR).glob("*.safetensors"))
    assert parts == ["images_000000000_000000003.safetensors", "images_000000003_000000006.safetensors",
                     "images_000000006_000000009.safetensors", "images_000000009_000000010.safetensors"]
    merged = _run(world, out)  # the merge: nothing left to label
    assert merged.images == 0 and merged.total_images == 10
    assert not list((out / PARTS_DIR).glob("*.safetensors"))
    _same_contents(full_run, out)
    assert [e["first_image"] for e in PseudoLabels.open(out).entries] == [0, 3, 6, 9]


def test_the_merge_labels_the_blocks_a_missing_shard_left(world, full_run, tmp_path):  # noqa: F811
    out = tmp_path / "partial"
    assert _run(world, out, shard=Shard(1, 3)).images == 3  # block 1 only (images 3-5)
    run = _run(world, out)  # block 0 is missing: nothing merges, everything from image 0 is labelled
    assert (run.first_image, run.stop_image) == (0, 10)
    _same_contents(full_run, out)


def test_cli_shard_option(world, tmp_path, capsys):  # noqa: F811
    root = world[0]
    args = ["pseudo-label", "--teacher", str(root / "teacher"), "--oracle-proposals", "--cache", str(root / "cache"),
            "--pool", "emojiworld", "--templates", "single", "--max-proposals", "12", "--shard-images", "4",
            "--out", str(tmp_path / "cli"), "--threads", "1"]
    assert main([*args, "--shard", "1/2"]) == 0
    assert "shard 1/2: labelled 4 images" in capsys.readouterr().out
    assert main(args) == 0
    assert "10 images" in capsys.readouterr().out
