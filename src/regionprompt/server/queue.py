"""A bounded inference queue: a fixed pool of worker threads and a cap on waiting work.

Inference is CPU-bound and may take seconds, so it must not run on the event loop (which would
stall every other request, ``/health`` included). Each job takes a slot first; slots =
``workers + max_waiting``; with none free the job is refused at once (:class:`QueueFullError`,
HTTP 503) instead of piling up memory and latency.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from regionprompt.errors import RegionPromptError

T = TypeVar("T")


class QueueFullError(RegionPromptError):
    """Every worker is busy and the waiting line is full."""


class RequestTimeoutError(RegionPromptError):
    """A job did not finish within the request timeout."""


class InferenceQueue:
    """Run blocking jobs on ``workers`` threads with at most ``max_waiting`` jobs waiting."""

    def __init__(self, workers: int = 1, max_waiting: int = 8) -> None:
        self.workers = int(workers)
        self.capacity = int(workers) + int(max_waiting)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="regionprompt-infer")
        self._slots = threading.BoundedSemaphore(self.capacity)
        self._lock = threading.Lock()
        self._running = 0
        self._queued = 0

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Queue ``fn(*args, **kwargs)``; raises :class:`QueueFullError` when no slot is free."""
        if not self._slots.acquire(blocking=False):
            raise QueueFullError(
                f"server busy: {self.workers} running and {self.capacity - self.workers} waiting requests; retry shortly"
            )
        with self._lock:
            self._queued += 1

        def job() -> T:
            with self._lock:
                self._queued -= 1
                self._running += 1
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self._running -= 1

        try:
            future = self._executor.submit(job)
        except BaseException:
            self._release(cancelled=True)
            raise

        def done(f: Future[T]) -> None:
            self._release(cancelled=f.cancelled())

        future.add_done_callback(done)
        return future

    def _release(self, *, cancelled: bool) -> None:
        if cancelled:  # never started: it still counts as queued
            with self._lock:
                self._queued -= 1
        self._slots.release()

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float, **kwargs: Any) -> T:
        """Await ``fn`` on a worker thread. A job still queued at the timeout is cancelled; one already
        running finishes in the background (threads cannot be interrupted) and holds its slot until then.

        Raises:
            QueueFullError: no free slot.
            RequestTimeoutError: no result within ``timeout`` seconds.
        """
        future = self.submit(fn, *args, **kwargs)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            future.cancel()
            raise RequestTimeoutError(f"the request took longer than {timeout:g} s and was abandoned") from None

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"workers": self.workers, "capacity": self.capacity, "running": self._running, "waiting": self._queued}

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
