"""One thread that runs every torch call of a session: interactive work first, background work after."""
import atexit
import itertools
import queue
import threading
import weakref
from concurrent.futures import Future

STOP, INTERACTIVE, BACKGROUND = -1, 0, 1
_workers: "weakref.WeakSet[TorchWorker]" = weakref.WeakSet()


class TorchWorker:
    def __init__(self, name: str = "samed2-torch"):
        self._jobs = queue.PriorityQueue()
        self._order = itertools.count()  # FIFO within a priority
        self._lock = threading.Lock()  # no job is queued behind the stop marker
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        _workers.add(self)

    def submit(self, fn, *args, priority: int = INTERACTIVE) -> Future:
        future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the session is closed")
            self._jobs.put((priority, next(self._order), future, fn, args))
        return future

    def run(self, fn, *args):
        """Run fn on the worker and wait for its result (re-raising its exception here)."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        return self.submit(fn, *args).result()

    def drain(self) -> None:
        """Wait until every job queued so far has run."""
        self.submit(lambda: None, priority=BACKGROUND + 1).result()

    def close(self) -> None:
        """Cancel every queued job; the thread stops once the running one (if any) has finished.
        Returns at once: a step can take seconds on a CPU, and closing runs on Slicer's main thread."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._jobs.put((STOP, next(self._order), None, None, None))

    def join(self, timeout=None) -> bool:
        """Wait until the thread has stopped (after close); whether it has."""
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self):
        while True:
            _, _, future, fn, args = self._jobs.get()
            if future is None:
                self._cancel_queued()
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the waiting caller
                future.set_exception(exc)

    def _cancel_queued(self):
        while True:
            try:
                _, _, future, _, _ = self._jobs.get_nowait()
            except queue.Empty:
                return
            if future is not None:
                future.cancel()


@atexit.register
def _stop_all() -> None:
    """At interpreter exit no torch call may still run on a worker (torch aborts the process:
    "terminate called without an active exception"): stop every worker after its running step."""
    for worker in list(_workers):
        worker.close()
        worker.join()
