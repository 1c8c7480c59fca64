"""Resumable training state: written atomically, read without unpickling arbitrary objects.

A checkpoint file holds the model and optimizer state dicts, the scheduler state, the step, the RNG
states and a JSON-able ``extra`` dict. It is written to a temporary file and renamed, so a crash or a
kill mid-write leaves the previous checkpoint intact. Reading uses ``torch.load(weights_only=True)``:
our own files, but the habit keeps a swapped file from running code.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regionprompt.data.files import atomic_write
from regionprompt.errors import CheckpointError


@dataclass
class TrainState:
    """Everything needed to continue a run exactly where it stopped."""

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None = None
    rng: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def capture_rng() -> dict[str, Any]:
    """The Python, numpy and torch RNG states, as tensors/ints only (loadable with weights_only)."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    return {
        "python_version": int(py_state[0]),
        "python_state": torch.tensor(py_state[1], dtype=torch.int64),
        "python_gauss": float(py_state[2]) if py_state[2] is not None else None,
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    if not state:
        return
    random.setstate((state["python_version"], tuple(state["python_state"].tolist()), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])


def save_train_state(state: TrainState, path: str | Path) -> None:
    """Atomically write ``state`` to ``path`` (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "step": state.step,
        "model": state.model,
        "optimizer": state.optimizer,
        "scheduler": state.scheduler,
        "rng": state.rng,
        "extra": state.extra,
    }
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write(path, write)


def load_train_state(path: str | Path) -> TrainState:
    """Read a checkpoint written by :func:`save_train_state`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged archive; all mean "unreadable"
        raise CheckpointError(f"{path}: unreadable training checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or not {"step", "model", "optimizer"} <= payload.keys():
        raise CheckpointError(f"{path}: not a RegionPrompt training checkpoint")
    return TrainState(
        step=int(payload["step"]),
        model=payload["model"],
        optimizer=payload["optimizer"],
        scheduler=payload.get("scheduler"),
        rng=payload.get("rng") or {},
        extra=payload.get("extra") or {},
    )
