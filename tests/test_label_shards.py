"""`regionprompt label --shard i/n`: independent jobs, each image labelled exactly once, merged into the dataset
an unsharded run writes; resumable per shard; a merge run labels what a failed shard left."""

from __future__ import annotations

import json

import pytest
from test_cli_detect import folder, images, interrupt_after, label  # noqa: F401 (fixtures)

from regionprompt.autolabel import JOURNAL_FILE, STATE_DIR
from regionprompt.sharding import Shard, parse_shard


def _journal(path):
    return [json.loads(line)["file"] for line in path.read_text().splitlines()] if path.exists() else []


def test_shards_cover_each_image_once_and_merge_to_the_unsharded_dataset(folder, images, tmp_path, monkeypatch, capsys):  # noqa: F811
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    assert label(folder, images, whole) == 0
    with monkeypatch.context() as patch:  # shard 1 is killed after one image...
        interrupt_after(patch, 1)
        assert label(folder, images, sharded, "--shard", "1/2") == 130
    assert label(folder, images, sharded, "--shard", "0/2") == 0
    assert not (sharded / "annotations.json").exists()  # a shard writes no dataset
    assert label(folder, images, sharded, "--shard", "1/2") == 0  # ...and resumed
    assert "shard 1/2: 2 of 2 images labelled (1 from an earlier run)" in capsys.readouterr().out
    state = sharded / STATE_DIR
    first, second = _journal(state / "journal-0-of-2.jsonl"), _journal(state / "journal-1-of-2.jsonl")
    # The sorted list: broken.png, scene_0.png, scene_2.png, sub/scene_1.png, sub/scene_3.png.
    assert first == ["broken.png", "scene_2.png", "sub/scene_3.png"] and second == ["scene_0.png", "sub/scene_1.png"]
    assert label(folder, images, sharded) == 0  # the merge: labels nothing, writes the dataset
    assert not (state / JOURNAL_FILE).exists() or _journal(state / JOURNAL_FILE) == []
    assert (sharded / "annotations.json").read_bytes() == (whole / "annotations.json").read_bytes()
    report = json.loads((sharded / "label_report.json").read_text())
    assert report["images"] == 5 and report["labelled"] == 4 and report["resumed"] == 5


def test_the_merge_labels_what_a_missing_shard_left(folder, images, tmp_path):  # noqa: F811
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    assert label(folder, images, whole) == 0
    assert label(folder, images, sharded, "--shard", "2/3") == 0
    assert label(folder, images, sharded) == 0
    state = sharded / STATE_DIR
    assert sorted(_journal(state / JOURNAL_FILE) + _journal(state / "journal-2-of-3.jsonl")) == sorted(
        ["broken.png", "scene_0.png", "scene_2.png", "sub/scene_1.png", "sub/scene_3.png"])
    assert (sharded / "annotations.json").read_bytes() == (whole / "annotations.json").read_bytes()


def test_shard_parsing():
    assert parse_shard("3/8") == Shard(3, 8) and Shard(3, 8).owns(11) and not Shard(3, 8).owns(12)
    for bad in ("8/8", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(Exception, match="i/n"):
            parse_shard(bad)
