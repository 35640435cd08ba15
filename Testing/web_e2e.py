"""`samed2 web` driven through a real page in headless Chromium (run by test_web.py inside the
web app's environment; its name keeps the main run from collecting it).

A real server process on 127.0.0.1 serves the 20-slice CT series; Debian's chromium (through
playwright) loads the page with the access token, clicks on the liver in the axial view, and the
test checks the segment in MRML (the page's segment list counts the MRML labelmap's voxels), in
the page's pixels (a screenshot), and in the exported files; then propagation, undo, a click
outside the volume, DICOM-SEG and NIfTI export, a box, and the server's stop. A second run with the
golden tiny model checks the page's message when a click finds nothing.

The model is the test-trained SAMed-2 (SAMED2_WEB_MODEL / SAMED2_WEB_MODEL_CONFIG, given by
test_web.py), imported into a temporary weights cache as a user would with `samed2 weights import`.
"""
import json
import os
from contextlib import contextmanager
import re
import subprocess
import sys
import threading
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicomseg_checks import assert_dciodvfy_clean
from PIL import Image
from playwright.sync_api import sync_playwright
from scipy import ndimage

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg"
SERIES = DATA / "example_ct_dicom"
LABELS = DATA / "example_seg_dicom.nii.gz"
LIVER = 5
TOKEN = "e2e-token-0123456789abcdef"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 900}
# A segment pixel in the screenshot: the liver colour blended over grey CT, so red exceeds green
# and blue by about half of (221 - 130) = 45 at the default 0.5 fill opacity; grey CT (and JPEG's
# chroma noise, a few levels) stays far below 20.
SEGMENT_HUE_MARGIN = 20
timings = {}


def import_model(cache, weights, config):
    from samed2.weights import import_checkpoint

    import_checkpoint(weights, name="test-model", config=config, cache_dir=cache)
    return cache


@pytest.fixture
def trained_cache(tmp_path):
    weights, config = os.environ.get("SAMED2_WEB_MODEL"), os.environ.get("SAMED2_WEB_MODEL_CONFIG")
    if not weights or not config:
        pytest.fail("SAMED2_WEB_MODEL and SAMED2_WEB_MODEL_CONFIG name the model: run this through test_web.py")
    return import_model(tmp_path / "weights", weights, json.loads(Path(config).read_text())["model"])


@contextmanager
def web_server(image, cache, out):
    """`samed2 web` on 127.0.0.1 (a free port); yields (page URL, process)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("samed2")), "web", str(image), "--model", "test-model", "--cache-dir",
         str(cache), "--out", str(out), "--port", "0", "--token", TOKEN, "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, lines = None, []
    for line in process.stdout:
        lines.append(line)
        found = re.search(r"Open in a browser: (\S+)", line)
        if found:
            url = found.group(1)
            break
    assert url is not None, "server did not start:\n" + "".join(lines[-40:])
    assert url.startswith("http://127.0.0.1:") and url.endswith(f"?secret={TOKEN}")
    timings["server start"] = time.perf_counter() - start
    threading.Thread(target=lines.extend, args=(process.stdout,), daemon=True).start()  # keep the pipe flowing
    try:
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()


@pytest.fixture
def page():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT)
        yield context.new_page()
        browser.close()


# ---- page helpers ------------------------------------------------------------------------------


def view_box(page):
    return page.locator("img.image-display-area").first.bounding_box()


def text(page, selector):
    return page.locator(selector).inner_text().strip()


def wait_text(page, selector, pattern, timeout_s=120):
    """The element's text once it matches `pattern` (the match)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(pattern, text(page, selector))
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{selector} never matched {pattern!r}; it reads {text(page, selector)!r} "
                         f"(status: {text(page, '.status')!r}, error: {text(page, '.error')!r})")


def segment_voxels(page):
    return int(wait_text(page, ".segments", r"Segment 1: (\d+) voxels").group(1))


def probe(page, x, y):
    """The world point (R, A, S) under page pixel (x, y), as the page's probe line shows it."""
    before = text(page, ".probe")
    page.mouse.move(x, y)
    deadline = time.monotonic() + 30
    while text(page, ".probe") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    r, a, s = map(float, re.search(r"R (\S+)\s+A (\S+)\s+S (\S+)", text(page, ".probe")).groups())
    return np.array([r, a, s])


def page_point(page, ras):
    """The page pixel over world point `ras` in the axial view, from two probes (the axial view maps
    page x to R and page y to A, each linearly)."""
    box = view_box(page)
    p0 = np.array([box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3])
    p1 = np.array([box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.7])
    w0, w1 = probe(page, *p0), probe(page, *p1)
    scale = (p1 - p0) / (w1[:2] - w0[:2])
    return p0 + (np.asarray(ras[:2]) - w0[:2]) * scale


def view_pixels(page):
    box = view_box(page)
    png = page.screenshot(clip=box)
    return np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(int), box


def segment_coloured(rgb):
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (r - g > SEGMENT_HUE_MARGIN) & (r - b > SEGMENT_HUE_MARGIN)


def click(page, selector):
    page.locator(selector).click()


# ---- the data ----------------------------------------------------------------------------------


def liver_on_slice(superior):
    """The series' reference labels (in physical space, by SimpleITK) on the axial slice at height
    `superior` (RAS S): the liver mask and a function from (i, j) to world RAS."""
    labels = sitk.ReadImage(str(LABELS))
    k = int(round(labels.TransformPhysicalPointToContinuousIndex((0.0, 0.0, superior))[2]))

    def ras(i, j):
        lps = labels.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))
        return np.array([-lps[0], -lps[1], lps[2]])

    return sitk.GetArrayFromImage(labels)[k] == LIVER, ras


def liver_point_on_slice(superior):
    """The liver voxel deepest inside the liver on that slice, in world RAS."""
    liver, ras = liver_on_slice(superior)
    j, i = np.unravel_index(np.argmax(ndimage.distance_transform_edt(liver)), liver.shape)
    return ras(i, j)


def liver_box_on_slice(superior, margin=3):
    """Two opposite corners (world RAS) of the liver's bounding box on that slice, `margin` voxels out."""
    liver, ras = liver_on_slice(superior)
    rows, cols = np.nonzero(liver)
    return ras(cols.min() - margin, rows.min() - margin), ras(cols.max() + margin, rows.max() + margin), liver.sum()


# ---- the test ----------------------------------------------------------------------------------


def open_page(page, url):
    start = time.perf_counter()
    page.goto(url)
    wait_text(page, ".status", r"Loaded .*Click on an object")
    page.wait_for_selector("img.image-display-area")
    time.sleep(1.0)  # the first frames after the views' resize
    timings["page ready"] = time.perf_counter() - start


def test_click_on_liver_propagate_undo_export_in_headless_chromium(trained_cache, page, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with web_server(SERIES, trained_cache, out) as (url, process):
        open_page(page, url)
        click_on_liver_propagate_undo_export(page, process, out)


def click_on_liver_propagate_undo_export(page, process, out):
    assert segment_voxels(page) == 0

    # the liver, on the slice the axial view shows
    superior = probe(page, view_box(page)["x"] + 50, view_box(page)["y"] + 50)[2]
    target = page_point(page, liver_point_on_slice(superior))
    before, box = view_pixels(page)
    assert segment_coloured(before).sum() == 0, "no segment colour before the click"

    start = time.perf_counter()
    page.mouse.click(*target)
    wait_text(page, ".status", r"Segmented slice k = \d+")
    timings["click to segment"] = time.perf_counter() - start
    clicked_voxels = segment_voxels(page)
    # the liver is far bigger than this on any slice of the series (about 1 cm^2 at 0.98 mm pixels)
    assert clicked_voxels > 100, f"segment after the click on the liver: {clicked_voxels} voxels"

    time.sleep(1.0)  # the next frame
    after, _ = view_pixels(page)
    if os.environ.get("SAMED2_WEB_SCREENSHOT"):  # the README's picture
        page.screenshot(path=os.environ["SAMED2_WEB_SCREENSHOT"])
    coloured = segment_coloured(after)
    assert coloured.sum() > 100, "the segment is not visible in the page"
    rows, cols = np.nonzero(coloured)
    click_in_view = (target[0] - box["x"], target[1] - box["y"])
    nearest = np.min(np.hypot(cols - click_in_view[0], rows - click_in_view[1]))
    assert nearest < 10, f"the visible segment is {nearest:.0f} px from the click"

    # propagation over the series, then undo back to the clicked slice
    start = time.perf_counter()
    click(page, ".propagate")
    propagated = int(wait_text(page, ".status", r"Propagation done: (\d+) slice").group(1))
    timings["propagate"] = time.perf_counter() - start
    assert propagated > 0
    propagated_voxels = segment_voxels(page)
    assert propagated_voxels > clicked_voxels

    click(page, ".undo")
    wait_text(page, ".status", r"^Undone\.")
    assert segment_voxels(page) == clicked_voxels
    click(page, ".propagate")
    wait_text(page, ".status", r"Propagation done")
    assert segment_voxels(page) == propagated_voxels

    # a click outside the volume: a message, nothing changed
    page.mouse.click(box["x"] + 5, box["y"] + box["height"] / 2)
    wait_text(page, ".error", r"outside the volume")
    assert segment_voxels(page) == propagated_voxels

    # exports into the folder the server was started with
    start = time.perf_counter()
    click(page, ".save-dicom-seg")
    wait_text(page, ".status", r"Wrote DICOM-SEG with 1 segment")
    timings["DICOM-SEG export"] = time.perf_counter() - start
    click(page, ".save-nifti")
    wait_text(page, ".status", r"Wrote .*\.nii\.gz")
    stem = out / f"{SERIES.name}_segmentation"
    assert sorted(out.iterdir()) == [Path(f"{stem}{suffix}") for suffix in (".dcm", ".labels.json", ".nii.gz")]
    assert_dciodvfy_clean(Path(f"{stem}.dcm"))
    exported = sitk.GetArrayFromImage(sitk.ReadImage(f"{stem}.nii.gz"))
    assert int((exported > 0).sum()) == propagated_voxels, "the NIfTI holds what MRML holds"

    # a box (two clicks at opposite corners) around the liver, in a second segment
    click(page, ".add-segment")
    wait_text(page, ".status", r"Added Segment 2")
    click(page, ".box-mode")
    corner, opposite, liver_voxels = liver_box_on_slice(superior)
    page.mouse.click(*page_point(page, corner))
    wait_text(page, ".status", r"opposite corner")
    page.mouse.click(*page_point(page, opposite))
    wait_text(page, ".status", r"Segmented slice k = \d+")
    boxed = int(wait_text(page, ".segments", r"Segment 2: (\d+) voxels").group(1))
    print(f"\nbox on the liver: {boxed} voxels; the reference liver there: {liver_voxels}")
    # The test-trained model (128 px, trained on the 3 mm CT) boxes this 512-px series poorly
    # (390 of 18539 liver voxels measured): the box's path is checked, not its quality.
    assert boxed > 100
    assert segment_voxels(page) == propagated_voxels, "the box went to Segment 2 only"

    start = time.perf_counter()
    process.terminate()
    assert process.wait(timeout=30) is not None
    timings["stop"] = time.perf_counter() - start
    print("\nweb end-to-end timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


def test_a_click_where_the_model_finds_nothing_says_so_in_the_page(golden_dir, page, tmp_path):
    """The golden tiny SAMed-2 with its object-score head made to answer "absent" everywhere (on any
    CPU) finds nothing where the user clicks: the page says so instead of a silent no-op."""
    from safetensors.torch import load_file, save_file

    from conftest import golden_tiny_config

    state = load_file(str(golden_dir / "samed2_tiny_state.safetensors"))
    last = "sam_mask_decoder.pred_obj_score_head.layers.2"
    state[f"{last}.weight"].zero_()
    state[f"{last}.bias"].fill_(-20.0)
    absent = tmp_path / "absent.safetensors"
    save_file(state, str(absent))
    cache = import_model(tmp_path / "weights", absent, golden_tiny_config())
    with web_server(DATA.parent / "dcmqi" / "ct-3slice", cache, tmp_path) as (url, _):
        open_page(page, url)
        box = view_box(page)
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        wait_text(page, ".error", r"The model found nothing there \(slice k = 1\)")
        assert segment_voxels(page) == 0
