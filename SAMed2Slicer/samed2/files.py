"""Output files: checked before the work that fills them, then written whole or not at all.

Every file the engine writes (label maps, DICOM, pictures, reports, checkpoints, banks, the
weights manifest) goes through a temporary file beside its target that is flushed to disk and
renamed over the target only once complete, so a full disk, a crash or a cancel never leaves a
partial file. The temporary file is created with the usual permissions (the process's umask),
so the result is readable as any other file the user writes.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from samed2.errors import InputError, OutputError


def check_output_path(path: str | Path, suffixes: tuple[str, ...]) -> Path:
    """`path` as a Path if its name ends with one of `suffixes` (any case) and its folder exists;
    else InputError. Commands call it before their work, so a typo in an output name costs nothing."""
    path = Path(path)
    if not path.name.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise InputError(f"unsupported output format {path.name!r}: use {', '.join(suffixes)}")
    if not path.parent.is_dir():
        raise InputError(f"output folder does not exist: {path.parent}")
    return path


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same name ending, so writers pick the same format);
    on success it is synced and renamed over `path`, on any failure removed."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"output folder does not exist: {path.parent}")
    temporary = path.with_name(f".{secrets.token_hex(4)}.{path.name}")
    try:
        with open(temporary, "xb"):
            pass
        mode = temporary.stat().st_mode
    except OSError as exc:
        raise OutputError(f"cannot write in {path.parent}: {exc}") from None
    try:
        yield temporary
        os.chmod(temporary, mode)  # some writers (safetensors) replace the file with a private one
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise OutputError(f"could not write {path}: {exc}") from exc
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write(path: str | Path, write) -> None:
    """Call write(stream) on a binary stream whose bytes replace `path` once complete."""
    with atomic_output(path) as temporary, open(temporary, "wb") as stream:
        write(stream)
