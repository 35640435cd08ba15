"""DICOMweb: a series read from its URL into a folder (QIDO-RS, WADO-RS), a DICOM-SEG stored (STOW-RS).

Credentials come from the environment or a netrc file, never from the command line, and are never logged.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import requests

from samed2.errors import DicomError, InputError

TOKEN_ENV = "SAMED2_DICOMWEB_TOKEN"
USER_ENV = "SAMED2_DICOMWEB_USER"
PASSWORD_ENV = "SAMED2_DICOMWEB_PASSWORD"
CREDENTIALS_HELP = (f"set {TOKEN_ENV} (a bearer token), or {USER_ENV} and {PASSWORD_ENV}, or give the host a "
                    "line in ~/.netrc (or the file $NETRC names)")
SERIES_URL = re.compile(r"^(?P<root>https?://[^/?#]+(?:/[^?#]*?)?)/studies/(?P<study>[0-9.]+)"
                        r"/series/(?P<series>[0-9.]+)/?$")
TIMEOUT_S = (10, 120)  # connect, read
MODALITY, SOP_INSTANCE_UID = "00080060", "00080018"
NOT_IMAGES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "DOC", "REG"}


def is_url(text) -> bool:
    return str(text).startswith(("http://", "https://"))


@dataclass(frozen=True)
class SeriesURL:
    """`ROOT/studies/STUDY/series/SERIES`: ROOT is the DICOMweb service (e.g. http://host/dicom-web)."""

    root: str
    study: str
    series: str

    @classmethod
    def parse(cls, text: str) -> SeriesURL:
        _refuse_credentials(text)
        match = SERIES_URL.match(text)
        if not match:
            raise InputError(f"{text} is not a DICOMweb series URL: expected "
                             "http(s)://HOST/PREFIX/studies/STUDY_UID/series/SERIES_UID")
        return cls(**match.groupdict())


def service_root(text: str) -> str:
    """The DICOMweb service of a URL: the part before /studies, if any."""
    _refuse_credentials(text)
    if not is_url(text) or re.search(r"[?#]", text):
        raise InputError(f"{text} is not a DICOMweb URL: expected http(s)://HOST/PREFIX (no query or fragment)")
    return text.split("/studies/")[0].rstrip("/")


def _refuse_credentials(text: str) -> None:
    if re.match(r"^https?://[^/]*@", text):
        raise InputError(f"a DICOMweb URL must not hold a user name or password: {CREDENTIALS_HELP}")


class BearerAuth(requests.auth.AuthBase):
    def __init__(self, token: str):
        self.token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request

    def __repr__(self) -> str:
        return "BearerAuth(<token>)"


def open_session(ca_bundle=None) -> requests.Session:
    """A session with the credentials of the environment (else requests reads netrc) and TLS verification
    on: against `ca_bundle` (a PEM file) when given, else the system's certificates or $REQUESTS_CA_BUNDLE."""
    session = requests.Session()
    if os.environ.get(TOKEN_ENV):
        session.auth = BearerAuth(os.environ[TOKEN_ENV])
    elif os.environ.get(USER_ENV):
        session.auth = (os.environ[USER_ENV], os.environ.get(PASSWORD_ENV, ""))
    if ca_bundle is not None:
        if not Path(ca_bundle).is_file():
            raise InputError(f"--ca-bundle {ca_bundle} is not a file (a PEM file of the site's CA certificates)")
        session.mount("https://", VerifyWith(str(ca_bundle)))
    return session


class VerifyWith(requests.adapters.HTTPAdapter):
    """HTTPS verified against one CA bundle: a session's `verify` loses to $REQUESTS_CA_BUNDLE, this does not."""

    def __init__(self, ca_bundle: str):
        super().__init__()
        self.ca_bundle = ca_bundle

    def send(self, request, **kwargs):
        return super().send(request, **{**kwargs, "verify": self.ca_bundle})


def _client(root: str, session: requests.Session):
    from dicomweb_client import DICOMwebClient

    return DICOMwebClient(root, session=session, timeout=TIMEOUT_S)


@contextlib.contextmanager
def server_errors(root: str, what: str):
    """requests' failures as DicomErrors that say what failed and what to do (no credentials in them)."""
    try:
        yield
    except requests.HTTPError as error:
        status, reason = error.response.status_code, error.response.reason
        if status in (401, 403):
            raise DicomError(f"{root} refused {what} ({status} {reason}): {CREDENTIALS_HELP}") from None
        raise DicomError(f"{root} answered {status} {reason} to {what}") from None
    except requests.exceptions.InvalidJSONError:
        raise DicomError(f"{root} answered {what} with something that is not DICOM JSON: is {root} the root of a "
                         "DICOMweb service?") from None
    except requests.exceptions.SSLError:
        raise DicomError(f"{what}: the TLS certificate of {root} could not be verified; give your site's CA "
                         "certificates with --ca-bundle FILE.pem") from None
    except requests.RequestException as error:
        raise DicomError(f"{what}: the connection to {root} failed ({type(error).__name__}); is the server "
                         "running and the URL right?") from None


def fetch_series(url: SeriesURL, folder: Path, session: requests.Session, progress=None) -> list[Path]:
    """Every instance of the series into `folder` (one WADO-RS request each); DicomError when the series is
    missing, not images, or not fetched whole. `progress` wraps the instances (default: a tqdm bar)."""
    from tqdm import tqdm

    progress = progress or partial(tqdm, desc="fetching", unit="instance")
    client = _client(url.root, session)
    with server_errors(url.root, f"the search for series {url.series}"):
        found = client.search_for_instances(url.study, url.series, fields=[MODALITY])
    if not found:
        raise DicomError(f"{url.root} has no series {url.series} in study {url.study}")
    modality = _value(found[0], MODALITY)
    if modality in NOT_IMAGES:
        raise DicomError(f"series {url.series} is a {modality} series, not images: give the URL of an image series")
    files = []
    for number, item in enumerate(progress(found), start=1):
        uid = _value(item, SOP_INSTANCE_UID)
        with server_errors(url.root, f"fetching instance {number} of {len(found)} of series {url.series}"):
            dataset = client.retrieve_instance(url.study, url.series, uid)
        if "PixelData" not in dataset:
            raise DicomError(f"instance {uid} of series {url.series} holds no image (no Pixel Data): give the "
                             "URL of an image series")
        files.append(folder / f"{number:05d}.dcm")
        dataset.save_as(files[-1], enforce_file_format=True)
    return files


def _value(item: dict, tag: str) -> str:
    return (item.get(tag, {}).get("Value") or [""])[0]


@contextlib.contextmanager
def dicom_folder(source, ca_bundle=None):
    """The folder a DICOM input names: `source` itself, or for a series URL a temporary folder holding the
    series (removed afterwards, also when the fetch fails half way)."""
    if not is_url(source):
        yield Path(source)
        return
    url = SeriesURL.parse(str(source))
    with tempfile.TemporaryDirectory(prefix="samed2-dicomweb-") as temporary:
        folder = Path(temporary) / url.series  # named after the series, as outputs are after their input
        folder.mkdir()
        fetch_series(url, folder, open_session(ca_bundle))
        yield folder


def store(path: Path, root: str, session: requests.Session) -> None:
    """STOW-RS of one DICOM file; DicomError unless the server's answer lists it as stored."""
    import pydicom

    dataset = pydicom.dcmread(path)
    with server_errors(root, f"storing {path.name}"):
        answer = _client(root, session).store_instances([dataset])
    for failed in answer.get("FailedSOPSequence", []):
        raise DicomError(f"{root} refused to store {path.name} (failure reason {failed.get('FailureReason', '?')})")
    stored = {item.get("ReferencedSOPInstanceUID") for item in answer.get("ReferencedSOPSequence", [])}
    if dataset.get("SOPInstanceUID") not in stored:
        raise DicomError(f"{root} did not store {path.name}: its answer does not list the instance (a server "
                         "refuses instances without Study, Series or SOP Instance UID, among others)")
