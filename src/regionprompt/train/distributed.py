"""Data-parallel training across processes and machines, launched by ``torchrun``.

``torchrun --nproc-per-node N [--nnodes M ...] -m regionprompt train ...`` starts one process per
device and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`distributed_session` reads them and joins the process group (``gloo`` on CPU, ``nccl`` on GPUs).
Without those variables (or with ``WORLD_SIZE=1``) nothing is initialised and every helper here is the
identity, so a plain run computes exactly what it computed before this module existed.

The pieces a trainer uses:

* :func:`current` -- rank, world size, backend of this process (:class:`DistContext`);
* :func:`rank_slice` -- the rank's part of a global batch: the global batch stays a pure function of
  ``(seed, step)`` and each rank takes the contiguous slice ``rank * B .. (rank + 1) * B``, so the
  step -> per-rank batch map is a pure function of ``(seed, step, world size)``;
* :func:`gather_with_grad` -- all-gather of per-rank embeddings keeping the gradient (open_clip's
  ``gather_with_grad``), so contrastive losses see the global batch as in-batch negatives;
* :func:`sync_batchnorm` -- BatchNorm whose statistics are over the global batch (``torch.nn.SyncBatchNorm``
  runs only on GPUs; this one runs on CPU with ``gloo`` too);
* :func:`wrap_ddp` -- :class:`~torch.nn.parallel.DistributedDataParallel` around the trained module.

With those, every rank computes the loss of the whole global batch (its own slice carrying the
gradient), the backward of the all-gather sums the slices' gradients over ranks (``N`` times the rank's
share of the global gradient) and DDP averages over ranks: N ranks x B per rank take the same step as
one process with N x B, up to float summation order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from regionprompt.errors import RegionPromptError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job.

    Attributes:
        rank: global rank, 0 .. world_size - 1.
        world_size: number of processes (1: not distributed).
        local_rank: rank on this machine (which GPU it drives).
        backend: ``"gloo"``, ``"nccl"`` or ``None`` when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and the model folder."""
        return self.rank == 0

    def record(self, global_batch: int) -> dict[str, int | str | None]:
        """What a recipe states about the run's layout: world size, per-rank and global batch, backend."""
        return {"world_size": self.world_size, "batch_per_rank": global_batch // self.world_size,
                "global_batch": global_batch, "backend": self.backend}


def current() -> DistContext:
    """This process's :class:`DistContext` (the single-process one unless a process group is up)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_backend())


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_device(device: str | torch.device) -> torch.device:
    """The device this rank trains on: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun (one GPU per
    process); any other device is returned unchanged."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and env_world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


@contextmanager
def distributed_session(device: str | torch.device = "cpu") -> Iterator[DistContext]:
    """Join the process group torchrun describes (nothing when ``WORLD_SIZE`` is unset or 1), yield the
    :class:`DistContext`, and leave the group at the end. ``nccl`` for a CUDA ``device``, else ``gloo``."""
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        yield current()
        return
    if not dist.is_available():
        raise RegionPromptError("this PyTorch build has no torch.distributed; run without torchrun")
    device = rank_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, init_method="env://")
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if current().enabled:
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. builds a shared cache), the other ranks after it finished."""
    ctx = current()
    if ctx.enabled and not ctx.is_main:
        dist.barrier()
    yield
    if ctx.enabled and ctx.is_main:
        dist.barrier()


def rank_slice(global_batch: int, ctx: DistContext | None = None) -> slice:
    """The rank's rows of a global batch of ``global_batch`` rows (which the world size must divide)."""
    ctx = ctx or current()
    if global_batch % ctx.world_size:
        raise RegionPromptError(f"the batch size ({global_batch}) must be a multiple of the number of processes "
                                f"({ctx.world_size}): it is the global batch, split evenly over the ranks")
    per_rank = global_batch // ctx.world_size
    return slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 (ranks may hold different numbers of rows: padded for the transfer); the
    backward sums the gathered gradient over ranks and returns this rank's rows (an all-reduce, which
    ``gloo`` supports, unlike reduce-scatter). Half-precision tensors travel as float32 (``gloo`` has no
    bfloat16 reductions) and come back in their own dtype."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        local = (tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor).contiguous()
        count = torch.tensor([local.shape[0]], dtype=torch.int64, device=local.device)
        counts = [torch.zeros_like(count) for _ in range(world)]
        dist.all_gather(counts, count)
        rows = [int(c) for c in counts]
        padded = local.new_zeros((max(rows), *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        rank = dist.get_rank()
        ctx.start, ctx.stop = sum(rows[:rank]), sum(rows[: rank + 1])
        return torch.cat([part[:n] for part, n in zip(parts, rows)]).to(tensor.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = (grad.float() if grad.dtype in (torch.float16, torch.bfloat16) else grad).contiguous().clone()
        dist.all_reduce(total)
        return total[ctx.start : ctx.stop].to(grad.dtype)


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """``(B_r, ...)`` per rank -> ``(sum of B_r, ...)`` in rank order, differentiable; identity when not
    distributed. The ranks' row counts may differ (regions per image vary); the other dims must agree.
    Also right for tensors without gradient (labels, a frozen teacher's outputs)."""
    return _GatherWithGrad.apply(tensor) if current().enabled else tensor


class _AllReduceWithGrad(torch.autograd.Function):
    """Sum over ranks; the gradient of each rank's input is the sum of the ranks' output gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.contiguous().clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are the global batch's (all-reduces of the per-channel count
    and sum, then of the squared deviations). Same parameters and buffers as ``nn.BatchNorm2d``; in eval, or outside
    a process group, it is ``nn.BatchNorm2d``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and current().enabled):
            return super().forward(input)
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        channels = x.shape[1]
        # Two passes (mean, then the mean squared deviation) rather than E[x^2] - E[x]^2, whose
        # cancellation would cost digits that a single process's BatchNorm keeps.
        count = torch.tensor([x.numel() / channels], dtype=x.dtype, device=x.device)
        first = _AllReduceWithGrad.apply(torch.cat([count, x.sum(dim=(0, 2, 3))]))
        n = first[0].detach()
        mean = first[1:] / n
        centred = x - mean[None, :, None, None]
        var = _AllReduceWithGrad.apply((centred * centred).sum(dim=(0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                unbiased = var.detach() * n / (n - 1).clamp_min(1.0)
                self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out.to(input.dtype)


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Turn every ``nn.BatchNorm2d`` of ``module`` into a :class:`GlobalBatchNorm2d` in place (same
    parameter and buffer objects, so an optimizer built before or after sees the same tensors); a no-op
    when not distributed. State dicts are unchanged, so checkpoints and saved models read as before."""
    if current().enabled:
        for sub in module.modules():
            if type(sub) is nn.BatchNorm2d:
                sub.__class__ = GlobalBatchNorm2d
    return module


def wrap_ddp(module: nn.Module, device: torch.device, *, find_unused_parameters: bool = False) -> nn.Module:
    """``DistributedDataParallel(module)`` when distributed (broadcasts rank 0's weights), else ``module``."""
    if not current().enabled:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)
