"""Copy a trained detector folder into the package as the default model, in compact form.

    python scripts/install_default_model.py runs/detector-t5 --teacher-run runs/teacher5-clip \
        --cache runs/scene_cache_pretrain64_iconic --card-json runs/default_card.json

The CLIP part is saved with float16 weights and only the token-embedding rows of its training text
(:mod:`regionprompt.vl.compact`); the RPN is copied as is. ``--card-json`` is merged into
``model_card.json`` (recipe, timings, evaluation numbers).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from regionprompt.api import default_model_dir
from regionprompt.data.files import atomic_write_text
from regionprompt.interop.checkpoints import load_checkpoint
from regionprompt.vl.compact import (
    keep_learnt_tokens,
    save_compact,
    teacher_training_texts,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("detector", type=Path)
    parser.add_argument("--teacher-run", type=Path, required=True, help="the CLIP training run (captions + pool)")
    parser.add_argument("--cache", type=Path, required=True, help="the scene cache the teacher trained on")
    parser.add_argument("--card-json", type=Path, default=None)
    args = parser.parse_args()
    out = default_model_dir()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    clip = load_checkpoint(args.detector / "clip")
    kept = keep_learnt_tokens(clip, teacher_training_texts(args.cache, args.teacher_run / "concept_pool.json"))
    save_compact(clip, out / "clip")
    shutil.copytree(args.detector / "rpn", out / "rpn")
    shutil.copy2(args.detector / "detector.json", out / "detector.json")
    card = json.loads(args.card_json.read_text()) if args.card_json else {}
    card["compact_storage"] = {"dtype": "float16", "token_rows_kept": kept}
    atomic_write_text(out / "model_card.json", json.dumps(card, indent=2, sort_keys=True) + "\n")
    sizes = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    print(json.dumps(sizes, indent=1), f"\ntotal {sum(sizes.values()) / 1e6:.1f} MB, {kept} token rows kept")


if __name__ == "__main__":
    main()
