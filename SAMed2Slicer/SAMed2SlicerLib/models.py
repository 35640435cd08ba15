"""Model weights in Slicer: the cache under Slicer's cache directory, status lines for the
panel, downloads in the background (progress, cancel, resume) and imports of local files,
all through the engine's weights manager (samed2.weights).

The engine is imported inside the functions (it imports torch, which the install flow
provides on first use).
"""
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import slicer

CACHE_SUBFOLDER = ("SAMed2", "weights")
DEFAULT_MODEL = "samed2"


def weights_cache_dir() -> Path:
    """<Slicer's cache folder>/SAMed2/weights (Application settings > Cache)."""
    return Path(slicer.app.cachePath, *CACHE_SUBFOLDER)


def model_names(cache_dir) -> list:
    """Registry checkpoints, then checkpoints imported into this cache."""
    from samed2.weights import list_weights

    return [status.name for status in list_weights(cache_dir)]


def _megabytes(size) -> str:
    return f"{size / 1e6:,.0f} MB" if size else "size unknown"


def status_line(name, cache_dir) -> str:
    """One line for the panel: is `name` ready, partly downloaded or missing, and how big."""
    from samed2.weights import list_weights

    status = next((s for s in list_weights(cache_dir) if s.name == name), None)
    if status is None:
        return f"Unknown model '{name}': choose another, or import its checkpoint file."
    if status.state == "cached":
        check = "verified" if status.verified else "not verified yet (checked on first load)"
        return f"Ready: {status.filename}, {_megabytes(status.size)}, {check}; licence {status.licence}."
    if status.state == "partial":
        return f"Partly downloaded: Download resumes where it stopped ({_megabytes(status.size)})."
    return (f"Not downloaded ({_megabytes(status.size)}, licence {status.licence}): click Download, or get "
            f"{status.filename} from {status.page} and use Import.")


def is_cached(name, cache_dir) -> bool:
    from samed2.weights import list_weights

    return any(s.name == name and s.state == "cached" for s in list_weights(cache_dir))


def load(name, cache_dir):
    """The engine model for `name`, strictly loaded from the cache (WeightsError says what to do)."""
    from samed2.weights import load_model

    return load_model(name, cache_dir)


def import_file(path, cache_dir, name=None, config=None) -> Path:
    """Copy a checkpoint file into the cache after checking it loads (engine's import)."""
    from samed2.weights import import_checkpoint

    return import_checkpoint(path, name=name, config=config, cache_dir=cache_dir)


class DownloadCancelled(Exception):
    """Raised from the progress callback to stop a download (its partial file is kept)."""


@dataclass
class DownloadProgress:
    done: int
    total: Optional[int]
    finished: bool
    error: Optional[BaseException]
    path: Optional[Path]

    @property
    def fraction(self) -> Optional[float]:
        return self.done / self.total if self.total else None


class WeightsDownload:
    """Downloads one checkpoint into the cache on a background thread.

    `poll()` reads the progress from any thread; `cancel()` stops at the next received chunk
    and keeps the partial file, so the next download resumes it.
    """

    def __init__(self, checkpoint, cache_dir):
        self._checkpoint = checkpoint
        self._cache_dir = cache_dir
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._state = DownloadProgress(0, None, False, None, None)
        self._thread = threading.Thread(target=self._run, name="SAMed2 weights download", daemon=True)

    def start(self) -> "WeightsDownload":
        self._thread.start()
        return self

    def _progress(self, done, total) -> None:
        if self._cancel.is_set():
            raise DownloadCancelled("download cancelled: it resumes where it stopped next time")
        with self._lock:
            self._state = DownloadProgress(done, total, False, None, None)

    def _run(self) -> None:
        from samed2.weights import download

        try:
            path = download(self._checkpoint, self._cache_dir, progress=self._progress)
            outcome = dict(error=None, path=path)
        except BaseException as error:  # reported through poll()
            outcome = dict(error=error, path=None)
        with self._lock:
            self._state = DownloadProgress(self._state.done, self._state.total, True, **outcome)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def poll(self) -> DownloadProgress:
        with self._lock:
            return self._state

    def wait(self, timeout_s=None) -> DownloadProgress:
        self._thread.join(timeout_s)
        return self.poll()
