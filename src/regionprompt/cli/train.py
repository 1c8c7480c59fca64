"""``regionprompt train ...``: training commands (each resumable: rerun the same command after an interruption)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from regionprompt.train.loop import LoopResult

# Modules adding more ``regionprompt train MODEL`` subcommands; each exposes ``register(commands)``
# taking the ``train`` subparsers and may use :func:`add_run_options`, :func:`add_config_options`,
# :func:`start_run` and :func:`print_run`.
TRAIN_MODULES: tuple[str, ...] = ("regionprompt.cli.train_regions", "regionprompt.cli.train_rpn", "regionprompt.cli.train_detector", "regionprompt.cli.train_default")


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_config_options(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One ``--flag`` per field of a frozen config dataclass, defaults and comments from the class."""
    defaults = config_cls()
    for field in dataclasses.fields(config_cls):
        default = getattr(defaults, field.name)
        kind = {int: int, float: float, str: str, bool: _parse_bool}.get(type(default), str)
        if field.name == "image_size":
            kind = int
        parser.add_argument(
            f"--{field.name.replace('_', '-')}", type=kind, default=default, dest=field.name,
            help=f"(default: {default})",
        )


def config_from_args(args: argparse.Namespace, config_cls: type):
    return config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)})


def add_run_options(parser: argparse.ArgumentParser, *, scene_cache: str | None = "scene cache",
                    device: bool = False) -> None:
    """The options of every training command: ``--out`` (the run folder), ``--threads``, for a command
    that renders its own scenes (``scene_cache`` names them in the help) ``--cache`` and ``--workers``, and
    ``--device`` for one that can train on a GPU."""
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, log, final model)")
    if scene_cache:
        parser.add_argument("--cache", type=Path, default=None,
                            help=f"pre-rendered {scene_cache} folder (default OUT/scene_cache)")
        parser.add_argument("--workers", type=int, default=2, help="processes rendering the scene cache (default 2)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (default 2); use 1 while other jobs share the CPU: with 2 threads on a "
                        "loaded 2-core machine a step took 10x longer")
    if device:
        parser.add_argument("--device", default="cpu",
                            help="where the model trains: cpu (default), cuda or cuda:N; not part of the recipe, "
                            "so a run may resume on another device")


def start_run(args: argparse.Namespace, config_cls: type):
    """Set the torch threads of ``--threads`` and return the config the options describe."""
    import torch

    torch.set_num_threads(args.threads)
    return config_from_args(args, config_cls)


def print_run(result: LoopResult, out: Path, *, all_losses: bool = False, what: str = "model") -> None:
    """Print one line on a finished or stopped run: steps, state, time, last loss (or every loss term) and
    where the model is (``what`` names it)."""
    state = "finished" if result.finished else "stopped (rerun the same command to resume)"
    if all_losses:
        last = "last losses: " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if k != "grad_norm")
    else:
        last = f"last loss {result.metrics.get('loss', float('nan')):.4f}"
    print(f"trained {result.step} steps ({state}) in {result.seconds:.0f} s; {last}; {what}: {out / 'model'}")


def _train_clip(args: argparse.Namespace) -> int:
    from regionprompt.train.clip_pretrain import ClipPretrainConfig, train_clip
    from regionprompt.train.distributed import distributed_session

    config = start_run(args, ClipPretrainConfig)
    with distributed_session(args.device) as dist_ctx:
        result = train_clip(config, args.out, cache_dir=args.cache, workers=args.workers, device=args.device,
                            max_steps_this_run=args.max_steps_this_run, shards=args.shards,
                            shuffle_buffer=args.shuffle_buffer)
    if dist_ctx.is_main:
        print_run(result, args.out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train models (CLIP teacher, ...)", description=__doc__)
    commands = parser.add_subparsers(dest="train_command", metavar="MODEL", required=True)

    from regionprompt.train.clip_pretrain import ClipPretrainConfig

    clip = commands.add_parser(
        "clip",
        help="CLIP pretraining of the teacher on EmojiWorld image-caption pairs",
        description="Contrastive image-caption pretraining (symmetric InfoNCE, learnable temperature, AdamW, "
        "warm-up + cosine, gradient clipping). Checkpoints every --checkpoint-every steps into --out; rerun the "
        "same command to resume. The final model is written to OUT/model (safetensors + card.json).",
    )
    add_run_options(clip, device=True)
    clip.add_argument("--max-steps-this-run", type=int, default=None,
                      help="stop after this many steps (checkpointed; rerun to continue)")
    clip.add_argument("--shards", default=None,
                      help="train on real image-caption pairs: a folder (or glob) of WebDataset .tar shards "
                      "(regionprompt data shard, img2dataset); needs --concept-weight 0")
    clip.add_argument("--shuffle-buffer", type=int, default=1000, help="with --shards: samples in the shuffle buffer (default 1000)")
    add_config_options(clip, ClipPretrainConfig)
    clip.set_defaults(func=_train_clip)
    for module in TRAIN_MODULES:
        importlib.import_module(module).register(commands)
