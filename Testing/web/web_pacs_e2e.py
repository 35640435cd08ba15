"""`samed2 web` on a series from a real Orthanc (DICOMweb), driven through headless Chromium: the page
opens the series from its URL, a click on the liver segments it, "Save to PACS" stores the DICOM-SEG on
the server (read back with QIDO-RS and WADO-RS, checked with dciodvfy) and keeps it in --out; with the
server stopped, the page says the store failed and where the SEG is kept. Run by test_web.py in the web
app's environment, like web_e2e.py, with the same page helpers (web_page.py)."""
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from dicomweb_client import DICOMwebClient

from dicomseg_checks import assert_dciodvfy_clean
from orthanc_server import Orthanc
from web_page import (
    SERIES,
    TOKEN,
    VIEWPORT,
    click,
    eventually,
    import_model,
    liver_point_on_slice,
    page_point,
    probe,
    shows_volume,
    view_box,
    wait_text,
)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    from samed2.dicomseg import load_series, write_repaired_series

    files = write_repaired_series(load_series(SERIES), tmp_path_factory.mktemp("repaired") / "series")
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    server.upload(files)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    server.study, server.series = first.StudyInstanceUID, first.SeriesInstanceUID
    yield server
    server.stop()


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("out")


@pytest.fixture(scope="module")
def server(orthanc, out, tmp_path_factory):
    cache = tmp_path_factory.mktemp("weights")
    config = json.loads(Path(os.environ["SAMED2_WEB_MODEL_CONFIG"]).read_text())["model"]
    import_model(cache, "test-model", os.environ["SAMED2_WEB_MODEL"], config)
    url = f"{orthanc.root}/studies/{orthanc.study}/series/{orthanc.series}"
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("samed2")), "web", url, "--model", "test-model", "--cache-dir", str(cache),
         "--out", str(out), "--port", "0", "--token", TOKEN, "--device", "cpu"],
        text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if re.search(r"Open in a browser: (\S+)", line):
            break
    found = re.search(r"Open in a browser: (\S+)", "".join(lines))
    assert found, "server did not start:\n" + "".join(lines[-40:])
    assert any("fetching" in line for line in lines), "the series came over DICOMweb, with a progress bar"
    threading.Thread(target=lines.extend, args=(process.stdout,), daemon=True).start()
    yield found.group(1)
    process.terminate()
    process.wait(timeout=30)
    process.stdout.close()


@pytest.fixture(scope="module")
def page(browser, server):
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.goto(server)
    wait_text(page, ".status", r"Model .* loaded: click on an object")
    page.wait_for_selector("img.image-display-area")
    eventually(lambda: shows_volume(page, 0), "the axial view does not show the volume")
    return page


def test_save_to_pacs_stores_the_seg_beside_the_series_and_keeps_it(page, orthanc, out):
    box = view_box(page)
    superior = probe(page, box["x"] + 50, box["y"] + 50)[2]
    page.mouse.click(*page_point(page, liver_point_on_slice(superior)))
    wait_text(page, ".status", r"Segmented slice k = \d+")
    start = time.perf_counter()
    click(page, ".save-to-pacs")
    wait_text(page, ".status", r"Wrote DICOM-SEG with 1 segment.* Stored it on " + re.escape(orthanc.root))
    print(f"\nSave to PACS: {time.perf_counter() - start:.2f} s")
    kept = out / f"{orthanc.series}_segmentation.dcm"
    assert kept.is_file(), sorted(out.iterdir())
    client = DICOMwebClient(orthanc.root)
    (found,) = client.search_for_series(orthanc.study, search_filters={"Modality": "SEG"})
    (stored,) = client.retrieve_series(orthanc.study, found["0020000E"]["Value"][0])
    stored.save_as(out / "back.dcm", enforce_file_format=True)
    assert_dciodvfy_clean(out / "back.dcm")
    assert stored.SOPInstanceUID == pydicom.dcmread(kept).SOPInstanceUID
    assert stored.ReferencedSeriesSequence[0].SeriesInstanceUID == orthanc.series


def test_save_to_pacs_with_the_server_stopped_says_where_the_seg_is(page, orthanc, out):
    orthanc.stop()
    (out / f"{orthanc.series}_segmentation.dcm").unlink()
    click(page, ".save-to-pacs")
    message = wait_text(page, ".error", r"the connection to .* failed.*The DICOM-SEG is kept in (\S+)\.$").group(1)
    assert Path(message) == out / f"{orthanc.series}_segmentation.dcm" and Path(message).is_file()
