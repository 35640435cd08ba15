"""What the web end-to-end runs (web_e2e.py, web_pacs_e2e.py, screenshot.py) share: the series and
token they serve, the browser settings, importing a model into a weights cache, reading and driving the
page, and where the liver is in the series (from its label map)."""
import re
import subprocess
import sys
import threading
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "totalseg"
SERIES = DATA / "example_ct_dicom"
LABELS = DATA / "example_seg_dicom.nii.gz"
LIVER = 5
TOKEN = "e2e-token-0123456789abcdef"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 900}
# A segment pixel in the screenshot: the segment colour blended over grey CT at the default 0.5
# fill opacity, so the colour's strongest channel exceeds the others by about half their
# difference in the colour (the liver colour 221/130/102: about 45); grey CT (and JPEG's chroma
# noise, a few levels) stays far below 20.
SEGMENT_HUE_MARGIN = 20


def samed2_web(cache, out, model, **popen):
    """`samed2 web` on the series, on 127.0.0.1 (a free port) and the CPU; model None: the default
    (the best model cached)."""
    chosen = [] if model is None else ["--model", model]
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("samed2")), "web", str(SERIES), *chosen, "--cache-dir",
         str(cache), "--out", str(out), "--port", "0", "--token", TOKEN, "--device", "cpu"], text=True, **popen)


def start_page_server(cache, out, model):
    """`samed2 web` started and read up to the page's address: (URL, or None when the server ended
    before printing one; the process; its output lines, which keep coming in from a thread)."""
    process = samed2_web(cache, out, model, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    for line in process.stdout:
        lines.append(line)
        found = re.search(r"Open in a browser: (\S+)", line)
        if found:
            threading.Thread(target=lines.extend, args=(process.stdout,), daemon=True).start()  # keep the pipe flowing
            return found.group(1), process, lines
    return None, process, lines


def import_model(cache, name, weights, config):
    from samed2.weights import import_checkpoint

    return import_checkpoint(weights, name=name, config=config, cache_dir=cache)


# ---- page helpers ------------------------------------------------------------------------------


def view_box(page, view=0):
    return page.locator("img.image-display-area").nth(view).bounding_box()


def text(page, selector):
    return page.locator(selector).first.inner_text().strip()


def wait_text(page, selector, pattern, timeout_s=120):
    """The element's text once it matches `pattern` (the match)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(pattern, text(page, selector))
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{selector} never matched {pattern!r}; it reads {text(page, selector)!r} "
                         f"(status: {text(page, '.status')!r}, error: {text(page, '.error')!r})")


def wait_message(page, pattern, timeout_s=120):
    """The status or error line once one of them matches `pattern` (the match)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(pattern, text(page, ".status")) or re.search(pattern, text(page, ".error"))
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"neither status nor error matched {pattern!r}: status {text(page, '.status')!r}, "
                         f"error {text(page, '.error')!r}")


def voxels(page, segment="Segment 1"):
    return int(wait_text(page, ".segments", rf"{re.escape(segment)}: (\d+) voxels").group(1))


def probe(page, x, y):
    """The world point (R, A, S) under page pixel (x, y), as the page's probe line shows it."""
    before = text(page, ".probe")
    page.mouse.move(x, y)
    deadline = time.monotonic() + 30
    while text(page, ".probe") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    r, a, s = map(float, re.search(r"R (\S+)\s+A (\S+)\s+S (\S+)", text(page, ".probe")).groups())
    return np.array([r, a, s])


def page_point(page, ras, view=0, axes=(0, 1)):
    """The page pixel over world point `ras` in a view that maps page x and y linearly to the world
    coordinates `axes` (axial: R, A; coronal: R, S), from two probes."""
    box, axes = view_box(page, view), list(axes)
    p0 = np.array([box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.45])
    p1 = np.array([box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.55])
    w0, w1 = probe(page, *p0), probe(page, *p1)
    scale = (p1 - p0) / (w1[axes] - w0[axes])
    return p0 + (np.asarray(ras)[axes] - w0[axes]) * scale


def view_pixels(page, view=0):
    box = view_box(page, view)
    png = page.screenshot(clip=box)
    return np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(int), box


def eventually(check, message, timeout_s=30):
    """Wait until `check()` is true (the views' frames come a little after the change that causes them)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, message
        time.sleep(0.2)


def shows_volume(page, view):
    """The view shows the CT: bright (bone, soft tissue) and dark (air) parts, not a blank view."""
    grey = view_pixels(page, view)[0].mean(axis=2)
    return (grey > 100).sum() > 500 and grey.std() > 20


def coloured(rgb, channel=0):
    """Pixels where `channel` (0 red, 2 blue) exceeds both others by the segment hue margin."""
    others = [rgb[..., c] for c in range(3) if c != channel]
    return (rgb[..., channel] - others[0] > SEGMENT_HUE_MARGIN) & (rgb[..., channel] - others[1] > SEGMENT_HUE_MARGIN)


def click(page, selector):
    page.locator(selector).first.click()


def choose(page, selector, option):
    """Pick `option` in a Vuetify select."""
    page.locator(selector).first.click()
    page.locator(".v-overlay--active .v-list-item", has_text=re.compile(rf"^\s*{re.escape(option)}\s*$")).click()


def fill(page, selector, value):
    page.locator(f"{selector} input").first.fill(str(value))
    time.sleep(0.3)  # the state change reaches the server


# ---- the data ----------------------------------------------------------------------------------


def liver_on_slice(superior):
    """The series' reference labels (in physical space, by SimpleITK) on the axial slice at height
    `superior` (RAS S): the liver mask and a function from (i, j) to world RAS."""
    labels = sitk.ReadImage(str(LABELS))
    k = round(labels.TransformPhysicalPointToContinuousIndex((0.0, 0.0, superior))[2])

    def ras(i, j):
        lps = labels.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))
        return np.array([-lps[0], -lps[1], lps[2]])

    return sitk.GetArrayFromImage(labels)[k] == LIVER, ras


def deepest(mask):
    """(row, column) of the mask's pixel farthest from its edge."""
    return np.unravel_index(np.argmax(ndimage.distance_transform_edt(mask)), mask.shape)


def liver_point_on_slice(superior):
    """The liver voxel deepest inside the liver on that axial slice, in world RAS."""
    liver, ras = liver_on_slice(superior)
    j, i = deepest(liver)
    return ras(i, j)


def liver_points_far_apart(superior, depth=10):
    """Two points (world RAS) at least `depth` voxels inside the liver on that axial slice: the
    deepest one, and the one of those farthest from it."""
    liver, ras = liver_on_slice(superior)
    inside = ndimage.distance_transform_edt(liver)
    j, i = np.unravel_index(np.argmax(inside), inside.shape)
    rows, cols = np.nonzero(inside >= depth)
    far = np.argmax(np.hypot(rows - j, cols - i))
    return ras(i, j), ras(cols[far], rows[far])


def liver_point_on_coronal_plane(anterior):
    """The liver voxel deepest inside the liver on the coronal plane at RAS A = `anterior`."""
    labels = sitk.ReadImage(str(LABELS))
    j = round(labels.TransformPhysicalPointToContinuousIndex((0.0, -anterior, 0.0))[1])
    liver = sitk.GetArrayFromImage(labels)[:, j, :] == LIVER
    assert liver.any(), f"no liver on the coronal plane A = {anterior}"
    k, i = deepest(liver)
    lps = labels.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))
    return np.array([-lps[0], -lps[1], lps[2]])


def series_row_index(anterior):
    """The series' row (j) at RAS A = `anterior`, from the DICOM files' own geometry."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(SERIES)))
    series = reader.Execute()
    return round(series.TransformPhysicalPointToContinuousIndex((0.0, -anterior, series.GetOrigin()[2]))[1])


def liver_box_on_slice(superior, margin=3):
    """Two opposite corners (world RAS) of the liver's bounding box on that slice, `margin` voxels out."""
    liver, ras = liver_on_slice(superior)
    rows, cols = np.nonzero(liver)
    return ras(cols.min() - margin, rows.min() - margin), ras(cols.max() + margin, rows.max() + margin), liver.sum()


def exported_slices(path):
    """The axial slices (k) that hold segment voxels in an exported label map."""
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return sorted(int(k) for k in np.nonzero(labels.reshape(labels.shape[0], -1).any(axis=1))[0]), labels
