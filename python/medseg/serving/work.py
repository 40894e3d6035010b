"""A bounded work queue in front of a fixed number of workers (one per GPU for nnU-Net,
a few for the CPU services). A full queue refuses at once; a cancelled job that has not
started leaves the queue; a running job sees its `cancelled()` turn true."""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import Any, Callable

from medseg.progress import Cancelled, OperationCancelled, Progress
from medseg.serving import metrics
from medseg.serving.errors import QueueFull

Work = Callable[[Progress, Cancelled], Any]
_DONE = object()


class Job:
    """One submitted piece of work: progress events, cancellation, result."""

    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self.future: Future | None = None
        self.compute_seconds: float | None = None  # the work itself, set once it ran

    def progress(self, stage: str, fraction: float, message: str = "") -> None:
        if self._cancel.is_set():
            raise OperationCancelled("call cancelled by the client")
        self.events.put((stage, float(fraction), message))

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()
        if self.future is not None:
            self.future.cancel()  # leaves the queue if it has not started
        self.events.put(_DONE)

    def iter_progress(self, poll_seconds: float = 0.25, is_active: Callable[[], bool] = lambda: True):
        """Progress events until the work ends; cancels the job when the client goes away."""
        while True:
            try:
                event = self.events.get(timeout=poll_seconds)
            except queue.Empty:
                if not is_active():
                    self.cancel()
                    raise OperationCancelled("client went away") from None
                continue
            if event is _DONE:
                return
            yield event

    def result(self):
        try:
            return self.future.result()
        except CancelledError:
            raise OperationCancelled("call cancelled by the client") from None


class WorkQueue:
    def __init__(self, workers: int, capacity: int, name: str = "work"):
        if capacity < workers:
            raise ValueError(f"queue capacity {capacity} is below the worker count {workers}")
        self.workers = workers
        self.capacity = capacity
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._active = 0  # queued + running
        self.name = name
        metrics.watch_queue(name, lambda: self._active, capacity)

    @property
    def depth(self) -> int:
        return self._active

    def submit(self, work: Work) -> Job:
        with self._lock:
            if self._active >= self.capacity:
                raise QueueFull(f"server busy: {self._active} calls queued or running "
                                f"(capacity {self.capacity}); retry later")
            self._active += 1
            ahead = max(0, self._active - self.workers)
        job = Job()
        if ahead:
            job.events.put(("queue", 0.0, f"queued behind {ahead} call(s)"))

        def run():
            try:
                if job.cancelled():
                    raise OperationCancelled("call cancelled while queued")
                start = time.perf_counter()
                try:
                    return work(job.progress, job.cancelled)
                finally:
                    job.compute_seconds = time.perf_counter() - start
            finally:
                job.events.put(_DONE)

        job.future = self._executor.submit(run)
        job.future.add_done_callback(self._release)
        return job

    def _release(self, _future: Future) -> None:
        with self._lock:
            self._active -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
