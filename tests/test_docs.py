"""Every bash and python snippet of README.md and docs/*.md is marked, and the runnable ones run.

The pages run on a fresh folder each, with a tiny random T-Rex2 detector standing in for the shipped
model (``REGIONPROMPT_DEFAULT_MODEL``): the commands and calls are the real ones, the detections
meaningless, and a page takes seconds. See tests/doc_snippets.py for the markers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from doc_snippets import DOC_FILES, ROOT, read_blocks
from tiny_detector import build_tiny_trex2_detector

RUNNABLE_PAGES = [path for path in DOC_FILES if any(b.marker == "run" for b in read_blocks(path))]


def test_every_snippet_is_marked_run_or_not_run_with_a_reason() -> None:
    unmarked = [b.where for path in DOC_FILES for b in read_blocks(path)
                if b.lang in ("bash", "python") and b.marker is None]
    assert not unmarked, f"code blocks without <!-- run --> or <!-- not run: REASON -->: {unmarked}"


def test_the_readme_tour_and_the_api_page_are_runnable() -> None:
    names = {path.name for path in RUNNABLE_PAGES}
    assert {"README.md", "api.md", "cli.md", "concepts.md", "server.md", "emojiworld.md"} <= names


@pytest.fixture(scope="module")
def tiny_default(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_trex2_detector(tmp_path_factory.mktemp("tiny") / "detector")


@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=[p.name for p in RUNNABLE_PAGES])
def test_page_snippets_run(page: Path, tiny_default: Path, tmp_path: Path) -> None:
    env = dict(os.environ, REGIONPROMPT_DEFAULT_MODEL=str(tiny_default), REGIONPROMPT_HOME=str(tmp_path / "home"),
               REGIONPROMPT_CACHE_DIR=str(tmp_path / "cache"), REGIONPROMPT_NO_PROGRESS="1", HF_HUB_OFFLINE="1",
               MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "doc_snippets.py"), str(page), str(tmp_path / "work")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
