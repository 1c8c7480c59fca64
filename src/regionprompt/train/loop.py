"""The resumable training loop every trainer shares.

A trainer supplies ``step_fn(step) -> metrics``, which draws its batch *from the step number* (so a
resumed run sees exactly the batches an uninterrupted one would), runs forward/backward and the
optimizer step. The loop adds the progress bar, a JSON-lines log, periodic atomic checkpoints,
resume from the last checkpoint, and a final checkpoint when the run is interrupted (Ctrl-C or
SIGTERM), so nothing but the current step is ever lost.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from regionprompt.errors import CheckpointError
from regionprompt.logging_utils import get_logger, progress_bar
from regionprompt.train.checkpointing import TrainState, capture_rng, load_train_state, restore_rng, save_train_state
from regionprompt.train.distributed import barrier
from regionprompt.train.distributed import current as distributed_context

_log = get_logger("train")

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train_log.jsonl"


@dataclass(frozen=True)
class LoopResult:
    """What a run did: steps completed now, whether it finished, wall time of this invocation, last metrics."""

    step: int
    finished: bool
    seconds: float
    metrics: Mapping[str, float]
    resumed_from: int


class _Interrupted(Exception):
    """SIGTERM turned into an exception, so the loop can checkpoint before exiting."""


def run_loop(
    *,
    out_dir: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    total_steps: int,
    step_fn: Callable[[int], Mapping[str, float]],
    checkpoint_every: int = 200,
    log_every: int = 10,
    desc: str = "train",
    samples_per_step: int = 1,
    run_info: Mapping[str, Any] | None = None,
    max_steps_this_run: int | None = None,
) -> LoopResult:
    """Run (or resume) ``total_steps`` optimisation steps, checkpointing into ``out_dir``.

    ``run_info`` (e.g. the config) is stored in the checkpoint; resuming with different ``run_info``
    is refused, since the batches and schedule would no longer match. ``max_steps_this_run`` stops
    early (for tests and time-boxed sessions); the next call resumes.

    Under torchrun (:mod:`regionprompt.train.distributed`) every rank runs the loop and reads the
    checkpoint to resume (so ``out_dir`` must be on a filesystem all machines share); rank 0 alone writes
    the checkpoint, the log and the progress bar. ``model`` is the unwrapped module (not the DDP wrapper),
    whose state dict is the same on every rank.
    """
    writer, distributed = distributed_context().is_main, distributed_context().enabled
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_FILE
    info = json.loads(json.dumps(dict(run_info or {}), sort_keys=True, default=str))
    start = 0
    if ckpt_path.exists():
        state = load_train_state(ckpt_path)
        if state.extra.get("run_info", info) != info:
            raise CheckpointError(
                f"{ckpt_path} belongs to a run with different settings; use another --out or delete it\n"
                f"  checkpoint: {state.extra.get('run_info')}\n  now:        {info}"
            )
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        if scheduler is not None and state.scheduler is not None:
            scheduler.load_state_dict(state.scheduler)
        restore_rng(state.rng)
        start = state.step
        _log.info("resuming %s from step %d of %d", desc, start, total_steps)

    def save(step: int) -> None:
        if not writer:
            return
        save_train_state(
            TrainState(
                step=step,
                model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict() if scheduler is not None else None,
                rng=capture_rng(),
                extra={"run_info": info},
            ),
            ckpt_path,
        )

    terminated: list[int] = []

    def on_term(signum: int, frame: Any) -> None:
        if distributed:
            # torchrun signals every rank; stopping mid-step (inside a collective, or between the optimizer
            # step and the step count) would save a state no step ends with, so stop at the step's end.
            terminated.append(signum)
        else:
            raise _Interrupted()

    previous = signal.signal(signal.SIGTERM, on_term) if _main_thread() else None
    stop = total_steps if max_steps_this_run is None else min(total_steps, start + max_steps_this_run)
    bar = progress_bar(desc=desc, total=total_steps, initial=start, unit="step", hidden=not writer)
    metrics: Mapping[str, float] = {}
    step = start
    began = time.perf_counter()
    window_t, window_steps = began, 0
    try:
        with (out / LOG_FILE if writer else Path(os.devnull)).open("a") as log:
            while step < stop:
                model.train()
                metrics = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in step_fn(step).items()}
                if scheduler is not None:
                    scheduler.step()
                step += 1
                if terminated:
                    raise _Interrupted()
                window_steps += 1
                bar.update(1)
                if step % log_every == 0 or step == stop:
                    now = time.perf_counter()
                    rate = window_steps * samples_per_step / max(now - window_t, 1e-9)
                    window_t, window_steps = now, 0
                    lr = optimizer.param_groups[0]["lr"]
                    bar.set_postfix({**{k: f"{v:.4g}" for k, v in metrics.items()}, "samples/s": f"{rate:.1f}"})
                    log.write(json.dumps({"step": step, "lr": lr, "samples_per_s": round(rate, 2), **metrics}) + "\n")
                    log.flush()
                if step % checkpoint_every == 0 and step < total_steps:
                    save(step)
    except (KeyboardInterrupt, _Interrupted):
        save(step)
        bar.close()
        _log.warning("interrupted at step %d; checkpoint saved, rerun the same command to resume", step)
        raise KeyboardInterrupt from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    bar.close()
    save(step)
    barrier()  # the other ranks return once rank 0's checkpoint is on disk
    return LoopResult(step, step >= total_steps, time.perf_counter() - began, metrics, start)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
