"""Small files for shipped models: half precision and a token embedding cut to the words it learnt.

A CLIP text tower trained on EmojiWorld captions updates only the embedding rows of tokens that occur
in its training text; the other ~47k of the 49,408 BPE rows are still random initial values and carry
no information. Zeroing them (stored row-sparse, :func:`regionprompt.model_dir.compact_state`) and
casting to float16 shrinks an RN-tiny CLIP from 85 MB to ~17 MB. Words outside the training text map to
a zero vector instead of a random one: equally meaningless, and deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from regionprompt.model_dir import save_model_dir
from regionprompt.vl.clip_model import RegionPromptCLIP
from regionprompt.vl.templates import EMOJI_TEMPLATES

TOKEN_EMBEDDING = "token_embedding.weight"


def teacher_training_texts(cache_dir: str | Path, pool_path: str | Path) -> list[str]:
    """Every text ``regionprompt train clip`` showed the text tower: the captions of its scene cache and,
    when it wrote a caption-concept pool, each pool phrase in each ``emoji`` template."""
    from regionprompt.world.scene_cache import SceneCache

    texts = [caption for record in SceneCache(cache_dir).records for caption in record["captions"]]
    pool_path = Path(pool_path)
    if pool_path.is_file():
        pool = [c["name"] for c in json.loads(pool_path.read_text()).get("concepts", [])]
        texts += [template.format(name) for template in EMOJI_TEMPLATES for name in pool]
    return texts


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
