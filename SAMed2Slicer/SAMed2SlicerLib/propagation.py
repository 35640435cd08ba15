"""A propagation run: the engine computes slices on a background thread while the caller's
thread (Slicer's main thread, which alone may touch MRML) takes the results as they come.

The GUI calls `poll()` from a timer, so the panel stays responsive and shows progress; tests
and scripts call `wait()`. Cancel is honoured between slices and keeps what was computed.
"""
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional

_DONE = object()
POLL_INTERVAL_S = 0.05


@dataclass
class Progress:
    done: int  # slices computed so far
    total: int  # slices expected at most
    index: Optional[int]  # the last slice computed
    finished: bool
    cancelled: bool

    @property
    def fraction(self) -> float:
        return 1.0 if self.finished else min(self.done / self.total, 0.99) if self.total else 0.0


class PropagationRun:
    """Runs `produce(cancel_event)` (an iterable of engine SliceResults) on a worker thread.

    `consume(results)` is called on the polling thread with each batch of results; `finish()`
    once, on the polling thread, after the last batch (also after a cancel or an error).
    """

    def __init__(self, produce: Callable[[threading.Event], Iterable], consume: Callable[[List], None],
                 finish: Callable[[], None], total: int):
        self._produce = produce
        self._consume = consume
        self._finish = finish
        self._queue: "queue.Queue" = queue.Queue()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._work, name="SAMed2 propagation", daemon=True)
        self._finished = False
        self.total = total
        self.done = 0
        self.last_index = None
        self.error: Optional[BaseException] = None

    def start(self) -> "PropagationRun":
        self._thread.start()
        return self

    def _work(self) -> None:
        try:
            for result in self._produce(self._cancel):
                self._queue.put(result)
        except BaseException as error:  # handed to the polling thread, which reports it
            self._queue.put(error)
        finally:
            self._queue.put(_DONE)

    def cancel(self) -> None:
        """Stop after the slice being computed; what was computed is kept."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def finished(self) -> bool:
        return self._finished

    def poll(self) -> Progress:
        """Take the results computed so far (writing them through `consume`); never blocks."""
        batch, ended = [], False
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _DONE:
                ended = True
                break
            if isinstance(item, BaseException):
                self.error = item
                continue
            batch.append(item)
        self._take(batch)
        if ended and not self._finished:
            self._finished = True
            self._finish()
        return self.progress()

    def _take(self, batch: List) -> None:
        if not batch:
            return
        self.done += len(batch)
        self.last_index = batch[-1].index
        self._consume(batch)

    def progress(self) -> Progress:
        return Progress(self.done, max(self.total, self.done), self.last_index, self._finished, self.cancelled)

    def wait(self, timeout_s: Optional[float] = None) -> Progress:
        """Poll until the run ends; re-raise its error. TimeoutError after `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.poll().finished:
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"propagation did not finish within {timeout_s:g} s (cancelled)")
            time.sleep(POLL_INTERVAL_S)
        if self.error is not None:
            raise self.error
        return self.progress()
