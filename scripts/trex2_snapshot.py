"""A T-Rex2 model folder from a training checkpoint, to measure a run part-way (AP against training time).

    python scripts/trex2_snapshot.py runs/trex2v2-A/snapshots/ckpt_after_log_1000.pt --out runs/trex2v2-A/at1000

The checkpoint's recorded recipe rebuilds the architecture (the backbone folder it names must still
exist: its frozen text side is part of the model); the checkpoint's weights are loaded into it and the
folder is written as ``regionprompt train detector`` writes ``OUT/model`` (loadable by ``Detector.load``).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from regionprompt.train.checkpointing import load_train_state
from regionprompt.train.trex2 import TRex2TrainConfig, build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint.pt of a `train detector --arch trex2` run")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    args = parser.parse_args()
    state = load_train_state(args.checkpoint)
    info = state.extra.get("run_info", {})
    names = {f.name for f in dataclasses.fields(TRex2TrainConfig)}
    config = TRex2TrainConfig(**{k: v for k, v in info.items() if k in names})
    model = build_model(config)
    model.load_state_dict(state.model)
    model.card = model.card.with_updates(name=f"trex2-{model.card.clip.name}",
                                         training={"recipe": info, "snapshot_step": state.step})
    model.save(args.out)
    print(f"step {state.step} of {config.steps} -> {args.out}")


if __name__ == "__main__":
    main()
