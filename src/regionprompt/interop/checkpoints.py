"""Load CLIP weights from local files of the formats users bring, without running code from them.

Supported (detected from the file's content, not its extension):

* **our own** model directory: ``card.json`` + ``model.safetensors`` (weights checked against the card's hash);
* **OpenAI CLIP TorchScript** ``.pt`` (the files OpenAI released): a zip archive with TorchScript code and a
  ``data.pkl``, read without running any of it by
  :func:`~regionprompt.interop.torch_files.read_torchscript_tensors` (the allow-list unpickler described in
  :mod:`regionprompt.interop.torch_files`);
* **OpenAI plain state dict** ``.pt`` and **open_clip** checkpoints ``.pt`` / ``.bin`` (``torch.save``
  zip or legacy pickles; possibly wrapped as ``{"state_dict": ..., "epoch": ...}`` with ``module.``
  prefixes from DistributedDataParallel, or with open_clip's ``text.*`` custom-text layout): read with
  ``torch.load(weights_only=True)`` only;
* **safetensors** (open_clip's ``open_clip_model.safetensors`` or any CLIP state dict).

Without a card the architecture is inferred from tensor names and shapes (as open_clip's
``build_model_from_openai_state_dict`` does). The activation is not visible in weights: OpenAI-origin files
(TorchScript, or state dicts carrying OpenAI's ``input_resolution``/``context_length``/``vocab_size``
entries or float16 weights) get QuickGELU; otherwise the card's value (GELU for inferred cards, as open_clip's
non-``-quickgelu`` configs). Pass ``quick_gelu=`` to override.

Every failure is a :class:`~regionprompt.errors.CheckpointError` naming the file and the problem: unreadable
or truncated file, not a checkpoint (with a guess at what it is), not a CLIP state dict, architecture
mismatch (first differing tensors with both shapes), missing or unexpected keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from regionprompt.errors import CheckpointError
from regionprompt.interop.torch_files import read_state_dict
from regionprompt.logging_utils import get_logger
from regionprompt.vl.cards import ModelCard, ModelCardError, TextCard, VisionCard, load_card
from regionprompt.vl.clip_model import (
    CARD_FILE,
    WEIGHTS_FILE,
    RegionPromptCLIP,
    check_state_dict,
    describe_card,
    load_clip_dir,
    meta_model,
)

LOG = get_logger("interop.checkpoints")

#: Entries OpenAI's files carry that are not weights (ints or constant buffers rebuilt by the model).
NON_WEIGHT_NAMES = frozenset({"input_resolution", "context_length", "vocab_size", "attn_mask"})

def clean_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Normalise key layout: strip DistributedDataParallel's ``module.``, map open_clip's custom-text
    ``text.*`` layout to the OpenAI layout, drop non-weight entries; floating tensors -> float32."""
    items = dict(state)
    if items and all(k.startswith("module.") for k in items):
        items = {k[len("module."):]: v for k, v in items.items()}
    if "text.text_projection" in items and "text_projection" not in items:
        items = {k[len("text."):] if k.startswith("text.") else k: v for k, v in items.items()}
    return {
        k: (v.float() if v.is_floating_point() else v)
        for k, v in items.items()
        if k.rsplit(".", 1)[-1] not in NON_WEIGHT_NAMES
    }


def _looks_openai(raw: Mapping[str, torch.Tensor], fmt: str) -> bool:
    if fmt == "torchscript":
        return True
    if any(k in raw for k in ("input_resolution", "context_length", "vocab_size")):
        return True
    return any(v.dtype == torch.float16 for v in raw.values())


# ---- architecture ------------------------------------------------------------------------------


def count_blocks(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many numbered blocks ``prefix<i>.`` the state holds (``prefix`` ends with a dot)."""
    depth = prefix.count(".")
    return len({k.split(".")[depth] for k in state if k.startswith(prefix)})


def infer_card(state: Mapping[str, torch.Tensor], *, name: str = "inferred", quick_gelu: bool = False) -> ModelCard:
    """The card of a CLIP state dict in OpenAI layout (see :func:`clean_state_dict`), from names and shapes."""
    required = ["text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight"]
    required.append("visual.proj" if "visual.proj" in state else "visual.attnpool.positional_embedding")
    missing = [k for k in required if k not in state]
    if missing:
        sample = ", ".join(sorted(state)[:4])
        raise CheckpointError(f"not a CLIP state dict: missing {', '.join(missing)} (keys start: {sample} ...)")
    try:
        if "visual.proj" in state:
            conv = state["visual.conv1.weight"]
            grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            width = int(conv.shape[0])
            vision = VisionCard(
                image_size=int(conv.shape[-1]) * grid,
                width=width,
                layers=count_blocks(state, "visual.transformer.resblocks."),
                patch_size=int(conv.shape[-1]),
                mlp_ratio=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
            )
        else:
            layers = tuple(count_blocks(state, f"visual.layer{b}.") for b in (1, 2, 3, 4))
            grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = VisionCard(
                image_size=grid * 32, width=int(state["visual.layer1.0.conv1.weight"].shape[0]), layers=layers  # type: ignore[arg-type]
            )
        text_width = int(state["ln_final.weight"].shape[0])
        text = TextCard(
            kind="clip",
            context_length=int(state["positional_embedding"].shape[0]),
            vocab_size=int(state["token_embedding.weight"].shape[0]),
            width=text_width,
            heads=max(1, text_width // 64),
            layers=count_blocks(state, "transformer.resblocks."),
        )
        return ModelCard(
            name=name, embed_dim=int(state["text_projection"].shape[1]), vision=vision, text=text, quick_gelu=quick_gelu
        )
    except (KeyError, IndexError, ModelCardError) as exc:
        raise CheckpointError(f"cannot infer a CLIP architecture from the weights: {exc}") from None


# ---- entry point -------------------------------------------------------------------------------


def _resolve_card(card: ModelCard | str | None) -> ModelCard | None:
    if card is None or isinstance(card, ModelCard):
        return card
    try:
        return load_card(card)
    except ModelCardError as exc:
        raise CheckpointError(str(exc)) from None


def load_checkpoint(
    path: str | Path, card: ModelCard | str | None = None, *, quick_gelu: bool | None = None
) -> RegionPromptCLIP:
    """Load a CLIP model from a local file or one of our model directories; returned in eval mode.

    Args:
        path: a model directory (``card.json`` + ``model.safetensors``) or a checkpoint file of any format
            in the module docstring.
        card: expected architecture (a card or a shipped card name); verified against the weights.
            ``None``: infer it from the weights.
        quick_gelu: force the activation; ``None`` decides from the file's origin (module docstring).
    """
    path = Path(path)
    expected = _resolve_card(card)
    if path.is_dir() or (path.name == WEIGHTS_FILE and (path.parent / CARD_FILE).is_file()):
        model = load_clip_dir(path if path.is_dir() else path.parent, expected)
        if quick_gelu is not None and quick_gelu != model.card.quick_gelu:
            model = _rebuilt_with_activation(model, quick_gelu)
        return model
    raw, fmt = read_state_dict(path)
    state = clean_state_dict(raw)
    if quick_gelu is None:
        quick_gelu = True if _looks_openai(raw, fmt) else (expected.quick_gelu if expected else False)
    inferred = infer_card(state, name=expected.name if expected else path.stem, quick_gelu=quick_gelu)
    target = (expected or inferred).with_updates(quick_gelu=quick_gelu)
    try:
        # Shapes first, on a model without memory: a file of empty tensors can name a 10**9-row
        # embedding, which only a real allocation would discover.
        check_state_dict(meta_model(target), state, str(path))
        model = RegionPromptCLIP.uninitialized(target)
        checked = check_state_dict(model, state, str(path))
    except CheckpointError as exc:
        if expected is not None and not expected.same_architecture(inferred):
            raise CheckpointError(f"{exc}; the file holds {describe_card(inferred)}") from None
        raise
    model.load_state_dict(checked)
    LOG.info("loaded %s (%s format, %s, %s)", path, fmt, describe_card(target), "QuickGELU" if quick_gelu else "GELU")
    return model.eval()


def _rebuilt_with_activation(model: RegionPromptCLIP, quick_gelu: bool) -> RegionPromptCLIP:
    rebuilt = RegionPromptCLIP.uninitialized(model.card.with_updates(quick_gelu=quick_gelu))
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt.eval()
