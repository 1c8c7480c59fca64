"""Splitting a labelling job into independent shards (``--shard i/n``), for cluster schedulers and torchrun.

A shard is ``i/n``: job ``i`` of ``n`` (``0 <= i < n``) takes the work items whose number ``k`` has
``k % n == i``. The assignment is a pure function of the item list, so ``n`` jobs started anywhere (an
array job on a scheduler, the ranks of ``torchrun``) cover every item exactly once without talking to
each other; each job writes only its own progress file, and a final run without ``--shard`` merges them.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from regionprompt.errors import RegionPromptError


@dataclass(frozen=True)
class Shard:
    """Job ``index`` of ``count`` (``0 <= index < count``)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise RegionPromptError(f"shard {self.index}/{self.count}: need 0 <= i < n")

    def owns(self, number: int) -> bool:
        """Whether work item ``number`` belongs to this shard."""
        return number % self.count == self.index

    @property
    def tag(self) -> str:
        """``"2-of-8"``: the part of a progress file's name that says which shard wrote it."""
        return f"{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"i/n"`` -> :class:`Shard` (an argparse ``type``)."""
    try:
        index, count = (int(part) for part in text.split("/"))
        return Shard(index, count)
    except (ValueError, RegionPromptError):
        raise argparse.ArgumentTypeError(f"expected i/n with 0 <= i < n (e.g. 0/4), got {text!r}") from None


def shard_from_torchrun() -> Shard | None:
    """``RANK/WORLD_SIZE`` when launched by torchrun with more than one process, else ``None``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Shard(int(os.environ.get("RANK", "0")), world) if world > 1 else None
