"""One thread that runs every torch call of a session: interactive work first, background work after."""
import itertools
import queue
import threading
from concurrent.futures import Future

INTERACTIVE, BACKGROUND = 0, 1


class TorchWorker:
    def __init__(self, name: str = "samed2-torch"):
        self._jobs = queue.PriorityQueue()
        self._order = itertools.count()  # FIFO within a priority
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn, *args, priority: int = INTERACTIVE) -> Future:
        future = Future()
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
        self._jobs.put((BACKGROUND + 2, next(self._order), None, None, None))
        self._thread.join(timeout=30)

    def _loop(self):
        while True:
            _, _, future, fn, args = self._jobs.get()
            if future is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the waiting caller
                future.set_exception(exc)
