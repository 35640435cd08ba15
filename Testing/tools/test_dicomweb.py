"""From a PACS and back, against a real Orthanc on 127.0.0.1 (Debian's orthanc and orthanc-dicomweb):
a series URL as the input of segment, eval, export-seg and import-seg, the SEG stored with STOW-RS and
read back with QIDO-RS and WADO-RS, authentication, and each bad input."""
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicomseg_checks import assert_dciodvfy_clean
from http_server import FileServer
from orthanc_server import ORTHANC, Orthanc, TlsProxy, free_port, self_signed_certificate
from suite import require_module

require_module("dicomweb_client", "DICOMweb (the dicom extra)")
if not Path(ORTHANC).exists():
    why = f"Orthanc is not installed ({ORTHANC}): bash .ci/install installs orthanc and orthanc-dicomweb"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(why, pytrace=False)
    pytest.skip(why, allow_module_level=True)

# imported once the checks above have passed (samed2_tools.dicomweb needs dicomweb_client)
from samed2.dicomseg import load_series, write_repaired_series  # noqa: E402
from samed2.errors import DicomError, InputError  # noqa: E402
from samed2_tools import dicomweb  # noqa: E402
from samed2_tools.cli import main  # noqa: E402

SAMED2 = str(Path(sys.executable).with_name("samed2"))
USERS = {"alice": "wonderland-7f3c9e1d"}
TOKEN = "bearer-token-5b2e8a9f0c1d"
# a few slices of the 20 around the liver, and a box on them (voxel i, j and slice k): the golden
# tiny model's masks mean nothing, but they must be the same from the server and from the folder
PROMPT = ["--box", "150,180,330,360,10", "--coords", "voxel", "--propagate", "both", "--range", "8:12",
          "--stop-after-absent", "0"]


@pytest.fixture(scope="module")
def repaired(data_dir, tmp_path_factory):
    """The public TotalSegmentator series (empty UIDs) with its UIDs repaired, as Orthanc requires."""
    return write_repaired_series(load_series(data_dir / "totalseg" / "example_ct_dicom"),
                                 tmp_path_factory.mktemp("repaired") / "series")


def series_url(server: Orthanc, files) -> str:
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    return f"{server.root}/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, repaired):
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    start = time.perf_counter()
    server.upload(repaired)
    server.upload_seconds = time.perf_counter() - start
    yield server
    server.stop()


@pytest.fixture(scope="module")
def url(orthanc, repaired):
    return series_url(orthanc, repaired)


@pytest.fixture(scope="module")
def locked(tmp_path_factory, repaired):
    """An Orthanc with HTTP basic authentication on, holding the same series."""
    server = Orthanc(tmp_path_factory.mktemp("locked"), users=USERS).start()
    server.upload(repaired)
    yield server
    server.stop()


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for name in (dicomweb.TOKEN_ENV, dicomweb.USER_ENV, dicomweb.PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # never the user's own ~/.netrc


@pytest.fixture
def checkpoint(checkpoint):
    return [*checkpoint, "--device", "cpu"]


def client(server: Orthanc):
    from dicomweb_client import DICOMwebClient

    return DICOMwebClient(server.root)


def seg_series(server: Orthanc, study: str) -> list:
    return client(server).search_for_series(study, search_filters={"Modality": "SEG"})


def cpu_name() -> str:
    models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("model name")] if Path("/proc/cpuinfo").exists() else []
    return models[0] if models else platform.machine()


def labels(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_dicomweb_round_trip_segment_from_the_url_store_the_seg_read_it_back(
        orthanc, url, repaired, checkpoint, no_credentials, tmp_path, monkeypatch):
    (tmp_path / "temporary").mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "temporary"))
    timings = {"upload": orthanc.upload_seconds}
    start = time.perf_counter()
    dicomweb.fetch_series(dicomweb.SeriesURL.parse(url), tmp_path, dicomweb.open_session())
    timings["fetch"] = time.perf_counter() - start

    start = time.perf_counter()
    assert main(["segment", url, *checkpoint, *PROMPT, "--out", str(tmp_path / "from_url.nrrd")]) == 0
    timings["fetch + segment"] = time.perf_counter() - start
    start = time.perf_counter()
    assert main(["segment", str(repaired[0].parent), *checkpoint, *PROMPT, "--out", str(tmp_path / "local.nrrd")]) == 0
    timings["segment from the folder"] = time.perf_counter() - start
    mask = labels(tmp_path / "from_url.nrrd")
    assert mask.any() and np.array_equal(mask, labels(tmp_path / "local.nrrd")), "the URL's run differs"
    assert not list((tmp_path / "temporary").iterdir()), "the fetched series is removed afterwards"

    assert main(["export-seg", "--labels", str(tmp_path / "from_url.nrrd"), "--name", "1=liver", "--dicom", url,
                 "--out", str(tmp_path / "seg.dcm")]) == 0
    start = time.perf_counter()
    dicomweb.store(tmp_path / "seg.dcm", orthanc.root, dicomweb.open_session())
    timings["STOW"] = time.perf_counter() - start

    study = url.split("/studies/")[1].split("/")[0]
    (found,) = seg_series(orthanc, study)  # QIDO-RS: the SEG sits in the images' study
    seg_uid = found["0020000E"]["Value"][0]
    (instance,) = client(orthanc).retrieve_series(study, seg_uid)  # WADO-RS
    instance.save_as(tmp_path / "back.dcm", enforce_file_format=True)
    assert_dciodvfy_clean(tmp_path / "back.dcm")
    assert instance.SOPInstanceUID == pydicom.dcmread(tmp_path / "seg.dcm").SOPInstanceUID

    assert main(["import-seg", str(tmp_path / "back.dcm"), "--dicom", url, "--out", str(tmp_path / "back.nrrd")]) == 0
    assert np.array_equal(labels(tmp_path / "back.nrrd"), mask), "the stored SEG reads back to the local run's voxels"
    print(f"\nDICOMweb round trip on {cpu_name()} ({os.cpu_count()} cores), 20-slice "
          "CT 512x512, golden tiny SAMed-2, seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))


def test_dicomweb_stow_without_out_keeps_no_file_and_eval_reads_a_url(orthanc, url, data_dir, checkpoint,
                                                                      no_credentials, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    study = url.split("/studies/")[1].split("/")[0]
    before = len(seg_series(orthanc, study))
    labelmap = str(data_dir / "totalseg" / "example_seg_dicom.nii.gz")
    assert main(["export-seg", "--labels", labelmap, "--only", "5", "--name", "5=liver", "--dicom", url,
                 "--stow", url]) == 0  # a series URL names its server too
    assert len(seg_series(orthanc, study)) == before + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json", "tiny.pt"], "no SEG and no series left behind"

    assert main(["eval", "--data", url, labelmap, "--protocol", "propagation", "--labels", "5", *checkpoint,
                 "--out", str(tmp_path / "eval")]) == 0
    assert url.rsplit("/", 1)[1] in (tmp_path / "eval" / "results.json").read_text(), "the case is named by its UID"


def test_dicomweb_credentials_from_the_environment_and_netrc(locked, repaired, data_dir, no_credentials,
                                                             tmp_path, monkeypatch):
    url = series_url(locked, repaired)
    export = ["export-seg", "--labels", str(data_dir / "totalseg" / "example_seg_dicom.nii.gz"), "--only", "5",
              "--dicom", url, "--out", str(tmp_path / "seg.dcm")]
    (user, password), = USERS.items()
    monkeypatch.setenv(dicomweb.USER_ENV, user)
    monkeypatch.setenv(dicomweb.PASSWORD_ENV, password)
    assert main(export) == 0
    monkeypatch.delenv(dicomweb.USER_ENV)
    monkeypatch.delenv(dicomweb.PASSWORD_ENV)
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {user} password {password}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert main([*export[:-1], str(tmp_path / "seg2.dcm")]) == 0


@pytest.mark.parametrize("credentials", [{dicomweb.TOKEN_ENV: TOKEN},
                                         {dicomweb.USER_ENV: "alice", dicomweb.PASSWORD_ENV: TOKEN}])
def test_dicomweb_401_says_what_to_do_and_never_shows_the_credential(locked, repaired, data_dir, credentials,
                                                                     tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMED2_DICOMWEB")}
    env.update(credentials, NETRC=str(tmp_path / "no-netrc"))
    labelmap = str(data_dir / "totalseg" / "example_seg_dicom.nii.gz")
    run = subprocess.run([SAMED2, "-v", "export-seg", "--labels", labelmap, "--only", "5",
                          "--dicom", series_url(locked, repaired), "--out", str(tmp_path / "seg.dcm")],
                         check=False, capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2
    assert "refused the search for series" in run.stderr and "(401 Unauthorized)" in run.stderr
    assert dicomweb.TOKEN_ENV in run.stderr and "netrc" in run.stderr
    assert "DEBUG" in run.stderr, "the check ran with debug logging on"
    assert TOKEN not in run.stdout + run.stderr
    assert not (tmp_path / "seg.dcm").exists()


def test_dicomweb_refused_store_keeps_the_seg_and_says_where(locked, url, data_dir, no_credentials, tmp_path,
                                                           monkeypatch, capsys):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    assert main(["export-seg", "--labels", str(data_dir / "totalseg" / "example_seg_dicom.nii.gz"), "--only", "5",
                 "--dicom", url, "--stow", locked.root]) == 2
    error = capsys.readouterr().err
    assert "refused storing seg.dcm (401 Unauthorized)" in error
    kept = Path(error.split("the SEG is kept in ")[1].strip())
    assert kept.is_file() and kept.is_relative_to(tmp_path)
    assert pydicom.dcmread(kept).Modality == "SEG"


def test_dicomweb_store_rejected_by_the_server_is_a_dicom_error(orthanc, data_dir):
    """Orthanc refuses instances without UIDs (the public series as published)."""
    raw = min((data_dir / "totalseg" / "example_ct_dicom").iterdir())
    with pytest.raises(DicomError, match=f"{orthanc.root} did not store {raw.name}"):
        dicomweb.store(raw, orthanc.root, dicomweb.open_session())


@pytest.mark.parametrize("make_url, message", [
    (lambda url: url.replace(url.split("/studies/")[1].split("/")[0], "1.2.3.4"), "has no series"),
    (lambda url: url.rsplit("/", 1)[0] + "/9.8.7", "has no series 9.8.7"),
    pytest.param(lambda url: f"http://127.0.0.1:{free_port()}/dicom-web/studies/1.2/series/3.4",
                 "the connection to .* failed", marks=pytest.mark.slow),  # dicomweb_client retries 5 times: 30 s
    (lambda url: url.replace("/series/", "/serie/"), "is not a DICOMweb series URL"),
    (lambda url: url.replace("http://", "http://alice:secret@"), "must not hold a user name or password"),
])
def test_dicomweb_bad_urls_are_clear_errors(orthanc, url, no_credentials, make_url, message, tmp_path, capsys):
    assert main(["import-seg", str(tmp_path / "none.dcm"), "--dicom", make_url(url), "--out",
                 str(tmp_path / "x.nrrd")]) == 2
    error = capsys.readouterr().err
    assert __import__("re").search(message, error), error
    assert "secret" not in error


def test_dicomweb_a_seg_series_is_not_an_image_series(orthanc, url, data_dir, checkpoint, no_credentials, tmp_path,
                                                      capsys):
    labelmap = str(data_dir / "totalseg" / "example_seg_dicom.nii.gz")
    assert main(["export-seg", "--labels", labelmap, "--only", "5", "--dicom", url, "--stow", orthanc.root,
                 "--out", str(tmp_path / "seg.dcm")]) == 0
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert main(["segment", f"{orthanc.root}/studies/{seg.StudyInstanceUID}/series/{seg.SeriesInstanceUID}",
                 *checkpoint, *PROMPT, "--out", str(tmp_path / "mask.nrrd")]) == 2
    assert "is a SEG series, not images" in capsys.readouterr().err
    assert not (tmp_path / "mask.nrrd").exists()


@pytest.mark.slow
def test_dicomweb_server_stopped_mid_fetch_fails_the_fetch(tmp_path, repaired, no_credentials):
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        server.upload(repaired)

        def stop_after_five(instances):
            for number, instance in enumerate(instances):
                if number == 5:
                    server.stop()
                yield instance

        with pytest.raises(DicomError, match="fetching instance 6 of 20 .*: the connection to .* failed"):
            dicomweb.fetch_series(dicomweb.SeriesURL.parse(series_url(server, repaired)), tmp_path,
                                  dicomweb.open_session(), progress=stop_after_five)
    finally:
        server.stop()
    assert len(list(tmp_path.glob("*.dcm"))) == 5


def test_dicomweb_a_failed_fetch_leaves_no_temporary_folder(orthanc, url, no_credentials, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with pytest.raises(DicomError, match="has no series"), dicomweb.dicom_folder(url.rsplit("/", 1)[0] + "/1.2"):
        pass
    assert not list(tmp_path.iterdir())


def test_dicomweb_ca_bundle_must_be_a_file(tmp_path):
    with pytest.raises(InputError, match="--ca-bundle .* is not a file"):
        dicomweb.open_session(tmp_path / "missing.pem")


@pytest.mark.slow
def test_dicomweb_tls_is_verified_and_a_site_ca_bundle_is_taken(orthanc, url, data_dir, no_credentials, tmp_path,
                                                               capsys):
    server_pem, certificate = self_signed_certificate(tmp_path)
    with TlsProxy(f"http://127.0.0.1:{orthanc.port}", server_pem) as proxy:
        https_url = url.replace(f"http://127.0.0.1:{orthanc.port}", f"https://127.0.0.1:{proxy.port}")
        export = ["export-seg", "--labels", str(data_dir / "totalseg" / "example_seg_dicom.nii.gz"), "--only", "5",
                  "--dicom", https_url, "--out", str(tmp_path / "seg.dcm")]
        assert main(export) == 2
        assert "could not be verified; give your site's CA certificates with --ca-bundle" in capsys.readouterr().err
        assert main([*export, "--ca-bundle", str(certificate)]) == 0
    assert (tmp_path / "seg.dcm").is_file()


def test_dicomweb_sends_the_bearer_token_even_beside_a_netrc_entry(no_credentials, tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login alice password other\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv(dicomweb.TOKEN_ENV, TOKEN)
    with FileServer() as server:  # answers 404 to what it does not serve, and records each request
        root = server.add("/nothing", b"").rsplit("/", 1)[0]
        with pytest.raises(DicomError, match="answered 404 Not Found to the search for series 3.4"):
            dicomweb.fetch_series(dicomweb.SeriesURL.parse(f"{root}/dicom-web/studies/1.2/series/3.4"), tmp_path,
                                  dicomweb.open_session())
    (request,) = server.requests
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("stow, message", [("http://127.0.0.1:9/dicom-web?token=abc", "no query or fragment"),
                                           ("/srv/pacs", "is not a DICOMweb URL"), (None, "give --out FILE.dcm")])
def test_dicomweb_stow_target_is_checked_before_any_work(data_dir, tmp_path, capsys, stow, message):
    argv = ["export-seg", "--labels", str(data_dir / "totalseg" / "example_seg_dicom.nii.gz"),
            "--dicom", str(tmp_path / "not-read")]
    assert main(argv + (["--stow", stow] if stow else [])) == 2
    assert message in capsys.readouterr().err
