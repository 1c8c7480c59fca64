"""The torch device a command runs on (``--device``): CPU by default, a CUDA GPU when asked for."""

from __future__ import annotations

import torch

from regionprompt.errors import RegionPromptError


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> a usable :class:`torch.device`.

    Raises:
        RegionPromptError: an unknown device name, or CUDA asked for where torch sees no GPU.
    """
    if name is None:
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise RegionPromptError(f"unknown device {name!r} (use cpu, cuda or cuda:N)") from exc
    if device.type not in ("cpu", "cuda"):
        raise RegionPromptError(f"unsupported device {name!r} (use cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RegionPromptError(f"device {name!r} asked for, but torch sees no CUDA GPU on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RegionPromptError(f"device {name!r} asked for, but there are {torch.cuda.device_count()} CUDA GPUs")
    return device
