"""Model folders (model.safetensors + card.json) and card JSON, shared by every saved model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from regionprompt.card_json import card_to_dict, card_to_json, parse_card_json
from regionprompt.errors import CheckpointError
from regionprompt.model_dir import (
    CARD_FILE,
    WEIGHTS_FILE,
    load_model_dir,
    read_model_dir,
    save_model_dir,
    tensors_hash,
)


@dataclass(frozen=True)
class LinearCard:
    width: int = 4
    weights_hash: str | None = None
    training: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def with_updates(self, **changes: Any) -> LinearCard:
        return replace(self, **changes)

    def to_json(self) -> str:
        return card_to_json(card_to_dict(self))

    @classmethod
    def from_json(cls, text: str, *, source: str = "<json>") -> LinearCard:
        return cls(**parse_card_json(text, source=source, what="a linear card"))


def build(card: LinearCard) -> nn.Module:
    return nn.Linear(card.width, 2)


def test_round_trip_writes_the_hash_and_loads_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    model = build(LinearCard()).train()
    card = save_model_dir(tmp_path / "m", model.state_dict(), LinearCard(training={"steps": 3}))
    assert card.weights_hash == tensors_hash(model.state_dict().items())
    text = (tmp_path / "m" / CARD_FILE).read_text()
    assert text == json.dumps({"width": 4, "weights_hash": card.weights_hash, "training": {"steps": 3}, "metrics": {}},
                              indent=2) + "\n"
    assert set(load_file(str(tmp_path / "m" / WEIGHTS_FILE))) == {"weight", "bias"}
    loaded = load_model_dir(tmp_path / "m", LinearCard, build, kind="linear")
    assert not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    read_card, state = read_model_dir(tmp_path / "m", LinearCard)
    assert read_card == card and set(state) == {"weight", "bias"}


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="no such linear model folder"):
        load_model_dir(tmp_path / "none", LinearCard, build, kind="linear")
    folder = tmp_path / "m"
    save_model_dir(folder, build(LinearCard()).state_dict(), LinearCard())
    (folder / WEIGHTS_FILE).rename(tmp_path / "w")
    with pytest.raises(CheckpointError, match=f"not a linear model folder, missing {WEIGHTS_FILE}"):
        load_model_dir(folder, LinearCard, build, kind="linear")
    (tmp_path / "w").rename(folder / WEIGHTS_FILE)
    # Another width: the weights no longer fit the card's architecture.
    card = json.loads((folder / CARD_FILE).read_text())
    (folder / CARD_FILE).write_text(json.dumps({**card, "width": 5}))
    with pytest.raises(CheckpointError, match=r"does not match the architecture .*1 with other shapes"):
        load_model_dir(folder, LinearCard, build)
    (folder / CARD_FILE).write_text(json.dumps({**card, "weights_hash": "0" * 64}))
    with pytest.raises(CheckpointError, match="do not match the hash"):
        load_model_dir(folder, LinearCard, build)
    (folder / CARD_FILE).write_text(json.dumps(card))
    data = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read safetensors file"):
        load_model_dir(folder, LinearCard, build)
    (folder / CARD_FILE).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="a linear card must be a JSON object, got list"):
        load_model_dir(folder, LinearCard, build)
    (folder / CARD_FILE).write_text("{oops")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model_dir(folder, LinearCard, build)


def test_compact_clip_folder_is_smaller_and_loads_to_the_same_outputs(tmp_path):
    from regionprompt.interop.checkpoints import load_checkpoint
    from regionprompt.vl.clip_model import build_clip
    from regionprompt.vl.compact import keep_learnt_tokens, save_compact

    torch.manual_seed(0)
    model = build_clip("RN-tiny").eval()
    texts = ["a red apple.", "two dogs on grass."]
    before = model.embed_texts(texts).detach()
    kept = keep_learnt_tokens(model, texts)
    assert 2 < kept < 20  # start/end tokens plus the words of the two texts
    assert torch.allclose(model.embed_texts(texts), before)  # the texts' own tokens are untouched
    model.save(tmp_path / "full")
    save_compact(model, tmp_path / "compact")
    size = lambda d: (tmp_path / d / "model.safetensors").stat().st_size  # noqa: E731
    assert size("compact") < 0.3 * size("full")
    loaded = load_checkpoint(tmp_path / "compact")
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(images), model.encode_image(images), atol=2e-3)
        assert torch.allclose(loaded.embed_texts(texts), model.embed_texts(texts), atol=2e-3)
    assert loaded.card.weights_hash == model.card.weights_hash
