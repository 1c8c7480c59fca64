"""The end of every finished training run: the final model folder and its ``recipe.json``."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from regionprompt.data.files import atomic_write_text

MODEL_DIR = "model"
RECIPE_FILE = "recipe.json"


class SavableModel(Protocol):
    """A model with a frozen card (``with_updates``) and a ``save(directory)`` writing a model folder."""

    card: Any

    def save(self, directory: str | Path) -> Any: ...


def needs_final_save(result: Any, out_dir: str | Path) -> bool:
    """Whether a run's :class:`~regionprompt.train.loop.LoopResult` still has its final model to write:
    it finished, and either trained in this call or finds no ``out_dir/model`` (killed between its last
    checkpoint and the save). Resuming a run that had finished and saved writes nothing: saving again
    would record this call's empty loss and wall time over the real ones."""
    if not result.finished:
        return False
    return result.step > result.resumed_from or not (Path(out_dir) / MODEL_DIR).is_dir()


def save_final_model(model: SavableModel, out_dir: str | Path, training: Mapping[str, Any], *, began: float) -> Path:
    """Record the run in the model's card and save it; returns the model folder ``out_dir/model``.

    ``training`` (recipe, data, losses...) plus ``seconds_last_invocation`` (since ``began``, a
    ``time.perf_counter()`` value taken before the loop) becomes ``card.training``; the model is saved
    to ``out_dir/model`` and the same record, keys sorted, to ``out_dir/recipe.json`` (atomically).
    """
    record = {**training, "seconds_last_invocation": round(time.perf_counter() - began, 1)}
    model.card = model.card.with_updates(training=record)
    folder = Path(out_dir) / MODEL_DIR
    model.save(folder)
    atomic_write_text(Path(out_dir) / RECIPE_FILE, json.dumps(record, indent=2, sort_keys=True, default=str))
    return folder
