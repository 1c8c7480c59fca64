"""A CLIP model folder (a region namer) from a RegionCLIP transfer checkpoint, to measure a run part-way.

    python scripts/namer_snapshot.py runs/ovft-A/checkpoint.pt --clip weights/student8-minilm --out runs/ovft-A/at500

``--clip`` is the CLIP folder the transfer started from (`train detector --arch regionclip --clip`):
the checkpoint holds its fine-tuned image tower (``visual.*``) and the learned background, not the
frozen text side. The tower's weights replace the starting model's and the result is saved as a CLIP
model folder, which ``scripts/attach_namer.py --namer`` takes.

``--mix A`` interpolates in weight space, ``A * fine-tuned + (1 - A) * starting`` (WiSE-FT, Wortsman et
al. 2022): fine-tuning on base boxes sharpens base names and the starting model keeps what it knew of
the novel ones; the interpolation trades between them at no inference cost (:mod:`regionprompt.train.namer_tuning`).
Choose ``A`` on ``val``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from regionprompt.train.namer_tuning import tuned_namer, tuned_tower


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint.pt of a `train detector --arch regionclip` run")
    parser.add_argument("--clip", type=Path, required=True, help="the CLIP model folder the run started from")
    parser.add_argument("--mix", type=float, default=1.0, help="weight of the fine-tuned tower (default 1)")
    parser.add_argument("--out", type=Path, required=True, help="CLIP model folder to write")
    args = parser.parse_args()
    tower, step, info = tuned_tower(args.checkpoint)
    clip = tuned_namer(args.clip, tower, args.mix, {"stage": "RegionCLIP transfer snapshot", "snapshot_step": step,
                                                    "recipe": info.get("config", {})})
    if info.get("clip_hash") not in (None, clip.card.training["initial_clip"]["weights_hash"]):
        parser.error(f"{args.checkpoint} did not start from {args.clip} (its CLIP hash differs)")
    clip.save(args.out)
    print(f"step {step}, mix {args.mix} -> {args.out}")


if __name__ == "__main__":
    main()
