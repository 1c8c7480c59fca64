"""A T-Rex2 detector folder whose text-only categories are named by a RegionCLIP model (region namer).

    python scripts/attach_namer.py --trex2 runs/trex2v2-A/model --namer weights/student8-minilm \\
        --out runs/detector-A-named [--compact]

``--trex2`` is a T-Rex2 model or detector folder, ``--namer`` a CLIP model folder (e.g. the RegionCLIP
student); see :mod:`regionprompt.detect.region_namer`. ``--no-namer`` writes the T-Rex2 detector alone
(the same folder layout, for side-by-side evaluation).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from regionprompt.api import NAMER_CONFIG, Detector
from regionprompt.vl.clip_model import RegionPromptCLIP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trex2", type=Path, required=True, help="T-Rex2 model folder or T-Rex2 detector folder")
    parser.add_argument("--namer", type=Path, help="CLIP model folder that names text-prompted boxes")
    parser.add_argument("--no-namer", action="store_true", help="write the T-Rex2 detector without a namer")
    parser.add_argument("--compact", action="store_true", help="float16 weights (what the package ships)")
    parser.add_argument("--out", type=Path, required=True, help="detector folder to write")
    args = parser.parse_args()
    if (args.namer is None) != args.no_namer:
        parser.error("give --namer DIR or --no-namer")
    detector = Detector.load(args.trex2, cache=None)
    if detector.kind != "trex2":
        parser.error(f"{args.trex2} is not a T-Rex2 detector")
    namer = RegionPromptCLIP.load(args.namer) if args.namer is not None else None
    Detector.from_trex2(detector.engine.model, detector.config, namer=namer, namer_config=NAMER_CONFIG).save(
        args.out, compact=args.compact)
    print(f"{args.out}: T-Rex2 {detector.model_hash[:12]}" + (f" + namer {args.namer}" if namer is not None else ""))


if __name__ == "__main__":
    main()
