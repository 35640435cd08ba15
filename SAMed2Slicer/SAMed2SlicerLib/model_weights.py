"""Model weights in Slicer: the cache under Slicer's cache directory, status lines for the
panel, downloads as background jobs (progress, cancel, resume) and imports of local files,
all through the engine's weights manager (samed2.weights).

The engine is imported inside the functions (it imports torch, which the install flow
provides on first use).
"""
from pathlib import Path

import slicer

from SAMed2SlicerLib.jobs import BackgroundJob, JobCancelled

CACHE_SUBFOLDER = ("SAMed2", "weights")
DOWNLOAD_JOB = "weights download"


def weights_cache_dir() -> Path:
    """<Slicer's cache folder>/SAMed2/weights (Application settings > Cache)."""
    return Path(slicer.app.cachePath, *CACHE_SUBFOLDER)


def default_model(cache_dir) -> str:
    """SAMed-2 when its weights are cached, else MedSAM-Lite (no torch needed to ask)."""
    from samed2.weights.choice import best_model

    return best_model(cache_dir)


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


def download_job(checkpoint, cache_dir) -> BackgroundJob:
    """A job (start() it) downloading one checkpoint into the cache. Progress is in bytes;
    `cancel()` stops at the next received chunk (JobCancelled) and keeps the partial file, so
    the next download resumes it. The job's result is the downloaded file's path."""
    def work(job):
        from samed2.weights import download

        def progress(done, total):
            if job.cancelled:
                raise JobCancelled("download cancelled: it resumes where it stopped next time")
            job.advance(done, total)

        return download(checkpoint, cache_dir, progress=progress)

    return BackgroundJob(DOWNLOAD_JOB, work)
