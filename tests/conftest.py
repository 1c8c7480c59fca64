"""Shared fixtures: offline, seeded, and the location of the real data in ../shared/data."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("REGIONPROMPT_NO_PROGRESS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$REGIONPROMPT_SHARED_DATA`` or ``<repo>/../shared/data`` (the workplace's real photos)."""
    return Path(os.environ.get("REGIONPROMPT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "coco_mini").is_dir():
        pytest.skip(f"real data not found at {path} (set REGIONPROMPT_SHARED_DATA)")
    return path


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
