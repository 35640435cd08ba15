"""Background jobs (propagation, weights downloads, warm-up): the work runs on a worker thread,
the caller's thread (Slicer's main thread, which alone may touch MRML) takes what it hands over.

Handing the GIL over. Slicer's main thread holds Python's GIL while it waits in Qt's event loop
(neither PythonQt nor CTK's Python manager releases it), so a Python worker thread advances only
while the main thread runs Python, or waits in a call that releases the GIL. `poll(wait_s)` is
such a wait: it blocks on the job's queue for up to `wait_s` (a lock wait, which releases the
GIL). `JobPoller.tick` is what the GUI's job timer runs: it polls the jobs with a wait of
TICK_WAIT_S, and the timer fires every TICK_INTERVAL_MS, which is shorter than the wait, so
Qt fires it again as soon as the events that came meanwhile are handled (a timer overdue when
it fires is due again at once). The workers get the GIL for all but the event handling, and
the GUI is never held longer than one wait or the writing of what arrived. `wait()` does the
same for scripts and tests.

Nothing here knows Qt; a web front end polls the same way.
"""
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

log = logging.getLogger(__name__)
_END = object()
WAIT_POLL_S = 0.05
TICK_INTERVAL_MS = 10
TICK_WAIT_S = 0.02


@dataclass(frozen=True)
class Progress:
    done: int  # items (slices, bytes) done so far
    total: Optional[int]  # items expected at most, None when unknown
    index: Optional[int]  # the last slice computed, for propagation
    finished: bool
    cancelled: bool

    @property
    def fraction(self) -> Optional[float]:
        if self.finished:
            return 1.0
        return min(self.done / self.total, 0.99) if self.total else None


class JobCancelled(Exception):
    """Raised inside the work (e.g. from a download's progress callback) to stop at a cancel."""


class BackgroundJob:
    """Runs `work(job)` on a worker thread. The work reports with `job.advance(done, total, index)`,
    hands items to the polling thread with `job.emit(item)` and checks `job.cancelled`; its return
    value becomes `job.result`, an exception `job.error`.

    On the polling thread, `take(items)` gets each batch of emitted items and `finish()` runs
    once after the last one (also after a cancel or an error).
    """

    def __init__(self, name: str, work: Callable[["BackgroundJob"], Any],
                 take: Optional[Callable[[List], None]] = None, finish: Optional[Callable[[], None]] = None,
                 total: Optional[int] = None):
        self.name = name
        self._work = work
        self._take = take
        self._finish = finish
        self._queue: "queue.Queue" = queue.Queue()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._progress = (0, total, None)
        self._finished = False
        self._held: list = []  # taken from the queue by a poll's wait, for the next poll
        self._thread = threading.Thread(target=self._run, name=f"SAMed2 {name}", daemon=True)
        self.result = None
        self.error: Optional[BaseException] = None

    def start(self) -> "BackgroundJob":
        self._thread.start()
        return self

    # ---- worker side -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.result = self._work(self)
        except BaseException as error:  # handed to the polling thread, which reports it
            if self.error is None:
                self.error = error
        finally:
            self._queue.put(_END)

    def emit(self, item) -> None:
        self._queue.put(item)

    def advance(self, done: int, total: Optional[int] = None, index: Optional[int] = None) -> None:
        with self._lock:
            self._progress = (done, self._progress[1] if total is None else total, index)

    # ---- either side -----------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop at the work's next check; what was done is kept."""
        self._cancel.set()

    @property
    def cancel_event(self) -> threading.Event:
        return self._cancel

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def finished(self) -> bool:
        """Whether the polling thread has taken everything and run `finish`."""
        return self._finished

    def progress(self) -> Progress:
        with self._lock:
            done, total, index = self._progress
        return Progress(done, None if total is None else max(total, done), index, self._finished, self.cancelled)

    # ---- polling side ----------------------------------------------------------------------

    def poll(self, wait_s: float = 0.0) -> Progress:
        """Take what the work handed over (through `take`). When nothing was there, wait up to
        `wait_s` for the next item (GIL released meanwhile); the next poll takes it. So a poll
        holds its thread for a wait or for a take, never both."""
        items, self._held = self._held + self._drain(), []
        if not items and not self._finished and wait_s > 0:
            try:
                self._held.append(self._queue.get(timeout=wait_s))
            except queue.Empty:
                pass
        batch = [item for item in items if item is not _END]
        if batch and self._take is not None and self.error is None:
            try:
                self._take(batch)
            except Exception as error:  # e.g. the segment was deleted: stop, report once
                self.error = error
                self.cancel()
        if _END in items:
            self._finished = True
            if self._finish is not None:
                self._finish()
        return self.progress()

    def _drain(self) -> list:
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def wait(self, timeout_s: Optional[float] = None) -> Progress:
        """Poll until the job ends; re-raise its error (not a JobCancelled). TimeoutError
        (after cancelling) past `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.poll(WAIT_POLL_S).finished:
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"{self.name} did not finish within {timeout_s:g} s (cancelled)")
        if self.error is not None and not isinstance(self.error, JobCancelled):
            raise self.error
        return self.progress()


class JobPoller:
    """The running jobs of one front end, and what its timer calls: `tick()` polls each job
    (one TICK_WAIT_S shared among them), reports progress with `on_progress(job, progress)` and
    the end once with `on_end(job)` (check `job.error` there), then forgets the job.

    A handler that raises is reported to `on_error(job, error)` (else logged), once: the job's
    progress is not reported again, its end still is, and the other jobs are still polled. So a
    broken handler never stops the polling of the rest."""

    def __init__(self, wait_s: float = TICK_WAIT_S):
        self.wait_s = wait_s
        self.on_error: Optional[Callable[[BackgroundJob, BaseException], None]] = None
        self._jobs: list = []

    def add(self, job: BackgroundJob, on_progress=None, on_end=None) -> BackgroundJob:
        self._jobs.append((job, on_progress, on_end))
        return job

    @property
    def jobs(self) -> List[BackgroundJob]:
        return [job for job, _, _ in self._jobs]

    def tick(self) -> bool:
        """Poll every job once; whether jobs remain (the front end keeps polling while they do)."""
        for entry in list(self._jobs):
            try:
                self._poll(entry)
            except Exception as error:  # reported once; the job is still polled, its end still reported
                self._report(entry[0], error)
                if entry in self._jobs:
                    self._jobs[self._jobs.index(entry)] = (entry[0], None, entry[2])
        return bool(self._jobs)

    def _poll(self, entry) -> None:
        job, on_progress, on_end = entry
        progress = job.poll(self.wait_s / len(self._jobs))
        if progress.finished:
            self._jobs.remove(entry)
            if on_end is not None:
                on_end(job)
        elif on_progress is not None:
            on_progress(job, progress)

    def _report(self, job, error) -> None:
        if self.on_error is None:
            log.error("%s: a handler failed", job.name, exc_info=error)
            return
        try:
            self.on_error(job, error)
        except Exception:  # the reporter itself failed (its window is gone): the log has it
            log.exception("%s: reporting a handler's failure failed", job.name)

    def cancel(self, where=lambda job: True, timeout_s: float = 60.0) -> None:
        """Cancel the jobs `where(job)` says and poll until they have ended (their on_end runs)."""
        for job in self.jobs:
            if where(job):
                job.cancel()
        deadline = time.monotonic() + timeout_s
        while any(where(job) for job in self.jobs) and time.monotonic() < deadline:
            self.tick()
