"""Small files for shipped models: half precision and a token embedding cut to the words it learnt.

A CLIP text tower trained on EmojiWorld captions updates only the embedding rows of tokens that occur
in its training text; the other ~47k of the 49,408 BPE rows are still random initial values and carry
no information. Zeroing them (stored row-sparse, :func:`regionprompt.model_dir.compact_state`) and
casting to float16 shrinks an RN-tiny CLIP from 85 MB to ~17 MB. Words outside the training text map to
a zero vector instead of a random one: equally meaningless, and deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from regionprompt.model_dir import save_model_dir
from regionprompt.vl.clip_model import RegionPromptCLIP

TOKEN_EMBEDDING = "token_embedding.weight"


@torch.no_grad()
def keep_learnt_tokens(model: RegionPromptCLIP, texts: Iterable[str]) -> int:
    """Zero the token-embedding rows of tokens absent from ``texts``; returns the number of rows kept."""
    used = torch.zeros(model.token_embedding.weight.shape[0], dtype=torch.bool)
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == 4096:
            used[model.tokenize(batch).unique()] = True
            batch = []
    if batch:
        used[model.tokenize(batch).unique()] = True
    model.token_embedding.weight[~used] = 0.0
    return int(used.sum())


def save_compact(model: RegionPromptCLIP, directory: str | Path) -> None:
    """Save ``model`` as a normal model folder with float16 weights and a row-sparse token embedding."""
    sparse = (TOKEN_EMBEDDING,) if model.card.text.kind == "clip" else ()
    model.card = save_model_dir(directory, model.state_dict(), model.card, dtype=torch.float16, sparse_rows=sparse)
