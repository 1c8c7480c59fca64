"""Hostile inputs at every entry point (issue 17): each gives a clear error or a correct result; no
traceback, no 5xx, no file written outside the output folder. The cases are generated in
``hostile_cases.py``; this module runs them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from histogram_detector import HistogramDetector
from hostile_cases import OUT, Case, api_cases, cli_cases, files_cases, server_cases
from tiny_detector import build_tiny_detector

from regionprompt.api import Detector
from regionprompt.cli import main
from regionprompt.concepts.library import ConceptLibrary
from regionprompt.server import ServerSettings, create_app


def _tree(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def test_the_corpus_is_large_and_covers_every_entry_point() -> None:
    cases = cli_cases() + api_cases() + files_cases() + server_cases()
    assert len(cases) >= 100
    assert {c.kind for c in cases} == {"cli", "api", "files", "server"}
    assert len({c.id for c in cases}) == len(cases), "case ids must be unique"


# ---- CLI ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", cli_cases(), ids=lambda c: c.id)
def test_cli(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = case.call(tmp_path)
    (tmp_path / OUT).parent.mkdir(exist_ok=True)  # the output folder's parent is the user's, not ours
    before = _tree(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code == case.code, err
    if case.code == 2:
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note:")]
        assert lines and lines[0].startswith("error: "), err
        if case.one_line:
            assert len(lines) == 1, err
        assert case.match in err.lower(), err
    else:
        assert case.check(tmp_path)
    out = (tmp_path / OUT).resolve()
    escaped = [p for p in _tree(tmp_path) - before if not p.resolve().is_relative_to(out)]
    assert not escaped, f"written outside the output folder: {escaped}"
    assert not Path("/tmp/regionprompt-evil").exists()


# ---- Python API -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    torch.set_num_threads(1)
    folder = build_tiny_detector(tmp_path_factory.mktemp("detector"))
    return Detector.load(folder, cache=None)


@pytest.mark.parametrize("case", api_cases(), ids=lambda c: c.id)
def test_api(case: Case, detector: Detector, tmp_path: Path) -> None:
    _run(case, lambda: case.call(detector, tmp_path), tmp_path)


# ---- files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", files_cases(), ids=lambda c: c.id)
def test_files(case: Case, tmp_path: Path) -> None:
    _run(case, lambda: case.call(tmp_path), tmp_path)


def _run(case: Case, call: Any, tmp_path: Path) -> None:
    # These cases build their inputs inside ``call``, so a tree diff cannot tell input from output; the
    # traversal targets are named: "evil..." one or two levels up from tmp/work/out, or /tmp/regionprompt-evil.
    if case.error is None:
        assert case.check(call(), tmp_path)
    else:
        with pytest.raises(case.error) as info:
            call()
        message = str(info.value)
        assert case.match in message.lower() and "\n" not in message, message
    escaped = [p for p in _tree(tmp_path) if p.name.startswith("evil") and not p.is_relative_to(tmp_path / OUT)]
    assert not escaped and not Path("/tmp/regionprompt-evil").exists(), f"written outside the output folder: {escaped}"


# ---- server ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    library = ConceptLibrary(tmp_path_factory.mktemp("server") / "concepts.db")
    with TestClient(create_app(HistogramDetector(), library, ServerSettings()), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.parametrize("case", server_cases(), ids=lambda c: c.id)
def test_server(case: Case, client: TestClient, tmp_path: Path) -> None:
    response = case.call(client, tmp_path)
    assert response.status_code < 500, response.text
    if case.code == 400:
        assert 400 <= response.status_code < 500, response.text
        detail = response.json()["detail"]
        assert isinstance(detail, str) and "Traceback" not in detail and case.match in detail.lower(), detail
    else:
        assert response.status_code == case.code, response.text
        assert case.check(response, tmp_path)
