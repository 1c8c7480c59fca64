"""The RegionCLIP measurement scripts run end to end on a small EmojiWorld build: per-object ranks of the
true name cover every ground-truth box, and the zero-shot table has one row per model and box source."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from regionprompt.cli import main
from regionprompt.vl.clip_model import build_clip

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rcscripts")
    assert main(["world", "build", "--split", "test", "--images", "3", "--seed", "1", "--size", "128",
                 "--out", str(root / "test")]) == 0
    torch.manual_seed(0)
    build_clip("RN-tiny").save(root / "model")
    return root


def test_region_ranks_cover_every_box(setup):
    import json

    ranks = _script("region_ranks").true_name_ranks(setup / "model", setup / "test", 64, None)
    gt = json.loads((setup / "test" / "annotations.json").read_text())
    vocabulary = len(gt["categories"])
    assert sum(len(r) for r in ranks.values()) == len(gt["annotations"]) > 0
    assert set(ranks) <= {"base", "novel"}
    for r in ranks.values():
        assert r.min() >= 1 and r.max() <= vocabulary


def test_regionclip_tables_one_row_per_model(setup, monkeypatch, capsys):
    out = setup / "tables"
    argv = ["regionclip_tables.py", "--gt", str(setup / "test"), "--model", f"a={setup / 'model'}",
            "--model", f"b={setup / 'model'}", "--proposals", "gt", "--input-size", "64", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    _script("regionclip_tables").main()
    table = (out / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith(("| a ", "| b "))]
    assert len(rows) == 2 and all("| gt | 3 |" in row for row in rows)
    assert rows[0].split("|")[4:7] == rows[1].split("|")[4:7]  # the same weights score the same
    assert (out / "a" / "gt" / "report.json").is_file()
