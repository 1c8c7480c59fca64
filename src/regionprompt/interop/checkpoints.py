"""Load CLIP weights from local files of the formats users bring, without running code from them.

Supported (detected from the file's content, not its extension):

* **our own** model directory: ``card.json`` + ``model.safetensors`` (weights checked against the card's hash);
* **OpenAI CLIP TorchScript** ``.pt`` (the files OpenAI released): a zip archive with TorchScript code and a
  ``data.pkl``. We never call ``torch.jit.load`` -- it compiles and runs the archive's TorchScript (class
  ``__setstate__`` methods run at load time) -- and ``torch.load(weights_only=True)`` refuses TorchScript
  archives. Instead :func:`read_torchscript_tensors` unpickles only ``data.pkl`` with an allow-list
  unpickler (the "restricting globals" pattern of the Python ``pickle`` docs): every ``__torch__.*`` module
  becomes an inert attribute holder, tensors are rebuilt by our own bounds-checked function from the raw
  storage bytes, and any other global is refused. The code folder is never read;
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

import io
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from regionprompt.errors import CheckpointError
from regionprompt.logging_utils import get_logger
from regionprompt.untrusted import UnsafeArchiveError, check_zip_archive
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

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


# ---- reading files -------------------------------------------------------------------------------


def _describe_non_checkpoint(head: bytes) -> str:
    if not head:
        return "an empty file"
    for magic, kind in (
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"\x89PNG", "a PNG image"),
        (b"GIF8", "a GIF image"),
        (b"%PDF", "a PDF document"),
        (b"\x1f\x8b", "a gzip archive"),
    ):
        if head.startswith(magic):
            return kind
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "binary data of an unknown kind"


def _is_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length, then a JSON object.
    return len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1


class _ScriptObject:
    """Inert stand-in for a pickled TorchScript module: it only stores the attribute dict it is given."""

    def __init__(self, *args: Any) -> None:
        self.attributes: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.attributes = state if isinstance(state, dict) else {}


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _identity(value: Any, *_: Any) -> Any:
    return value


class _TorchScriptUnpickler(pickle.Unpickler):
    """Allow-list unpickler for a TorchScript archive's ``data.pkl``: no callable from the file runs."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, source: Path) -> None:
        super().__init__(io.BytesIO(data))
        self.archive = archive
        self.prefix = prefix
        self.source = source
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__.") or module == "__torch__":
            return _ScriptObject
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch.jit._pickle" and name.startswith(("build_", "restore_type_tag")):
            return _identity  # typed-container markers: the value itself is what we need
        raise CheckpointError(f"{self.source}: refusing to load {module}.{name} from a TorchScript archive")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self.source}: unexpected persistent id {pid!r:.80} in TorchScript data")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self.source}: unknown storage type in TorchScript data")
        if key not in self.storages:
            try:
                raw = self.archive.read(f"{self.prefix}/data/{key}")
            except (KeyError, zipfile.BadZipFile, OSError, EOFError) as exc:
                raise CheckpointError(f"{self.source}: tensor data {key} unreadable (truncated file?): {exc}") from None
            itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
            if len(raw) != int(numel) * itemsize:
                raise CheckpointError(f"{self.source}: tensor data {key} has {len(raw)} bytes, expected {numel * itemsize}")
            self.storages[key] = torch.frombuffer(bytearray(raw), dtype=storage_type.dtype) if raw else torch.empty(
                0, dtype=storage_type.dtype
            )
        return self.storages[key]

    def _rebuild_tensor(self, storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> torch.Tensor:
        if not isinstance(storage, torch.Tensor):
            raise CheckpointError(f"{self.source}: malformed tensor record in TorchScript data")
        size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
        if len(size) != len(stride) or offset < 0 or min(size + stride, default=0) < 0:
            raise CheckpointError(f"{self.source}: malformed tensor layout {size} / {stride}")
        last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
        if last >= storage.numel():
            raise CheckpointError(f"{self.source}: tensor layout {size} / {stride} exceeds its data")
        return torch.as_strided(storage, size, stride, offset).clone()


def _flatten_script_object(obj: _ScriptObject) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    stack: list[tuple[str, _ScriptObject]] = [("", obj)]
    seen: set[int] = set()
    while stack:
        prefix, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for name, value in node.attributes.items():
            if isinstance(value, torch.Tensor):
                out[prefix + name] = value
            elif isinstance(value, _ScriptObject):
                stack.append((f"{prefix}{name}.", value))
    return out


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensor attributes of a TorchScript archive's module tree, by dotted name (no code executed)."""
    path = Path(path)
    zip_member_names(path)  # declared sizes checked before anything is inflated
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if not pickles:
                raise CheckpointError(f"{path}: zip archive without a data.pkl: not a PyTorch checkpoint")
            prefix = pickles[0].split("/")[0]
            root = _TorchScriptUnpickler(archive.read(pickles[0]), archive, prefix, path).load()
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot read the TorchScript archive (truncated or corrupt?): {exc}") from None
    if not isinstance(root, _ScriptObject):
        raise CheckpointError(f"{path}: TorchScript archive does not hold a module")
    return _flatten_script_object(root)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses non-tensor objects: say so instead of suggesting weights_only=False.
        first = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(f"{path}: contains objects other than tensors; refusing to unpickle it ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: cannot read the file (truncated or corrupt?): {str(exc)[:200]}") from None


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Raw tensors of a checkpoint file and its detected format.

    Returns ``(state, fmt)`` with ``fmt`` one of ``"torchscript"``, ``"torch"`` (``torch.save`` output),
    ``"safetensors"``. Keys are unchanged (see :func:`clean_state_dict`); only tensors are kept.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with path.open("rb") as handle:
        head = handle.read(16)
    if _is_safetensors(head):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path))), "safetensors"
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot read safetensors file (truncated or corrupt?): {exc}") from None
    if head.startswith(b"PK\x03\x04"):
        names = zip_member_names(path)
        if is_torchscript(names):
            return read_torchscript_tensors(path), "torchscript"
        if not any(n.endswith("/data.pkl") for n in names):
            raise CheckpointError(f"{path}: a zip archive, but not a PyTorch checkpoint (no data.pkl)")
        return _tensors_of(_torch_load(path), path), "torch"
    if head[:1] == b"\x80":  # pickle protocol marker: legacy (pre-zip) torch.save format
        return _tensors_of(_torch_load(path), path), "torch"
    raise CheckpointError(f"{path}: not a checkpoint, it is {_describe_non_checkpoint(head)}")


def _tensors_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # open_clip training checkpoint: {"epoch", "name", "state_dict", "optimizer"}
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: contains no tensors (keys: {', '.join(map(str, list(obj)[:5]))})")
    return tensors


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


def _count_blocks(state: Mapping[str, torch.Tensor], prefix: str) -> int:
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
                layers=_count_blocks(state, "visual.transformer.resblocks."),
                patch_size=int(conv.shape[-1]),
                mlp_ratio=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
            )
        else:
            layers = tuple(_count_blocks(state, f"visual.layer{b}.") for b in (1, 2, 3, 4))
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
            layers=_count_blocks(state, "transformer.resblocks."),
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


def zip_member_names(path: Path) -> list[str]:
    """Member names of a zip-format checkpoint (PyTorch's ``torch.save`` or TorchScript archive), after
    checking the sizes its directory declares (:func:`~regionprompt.untrusted.check_zip_archive`): every
    zip checkpoint goes through here before ``torch.load`` or our TorchScript reader inflates anything."""
    try:
        return check_zip_archive(path)
    except UnsafeArchiveError as exc:
        raise CheckpointError(str(exc)) from None


def is_torchscript(names: list[str]) -> bool:
    """Whether zip member ``names`` are a TorchScript archive's (code and constants beside the data)."""
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


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
