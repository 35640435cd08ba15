"""Closing a session returns at once, dropping its queued background encodes (the running one
finishes on the worker): a settings change, a new volume, a scene close or quitting Slicer closes
segmenters on the main thread; at exit the process waits for that one step and exits cleanly. A real session
(MedSAM-Lite, the published weights) with every slice queued for background encoding."""
import subprocess
import sys
import textwrap
import time

import pytest

from samed2.session import Session

from suite import DATA, REPO

CLOSE_LIMIT_S = 2.0  # before the fix: 30 s, then an abort at exit


def queue_every_slice(session):
    """Queue a background encode of every slice once one (warm) encode has been timed; returns
    that encode's seconds."""
    session.precompute(0, radius=0)
    session.wait_idle()  # the first encode warms up
    started = time.perf_counter()
    session.precompute(1, radius=0)
    session.wait_idle()
    one = time.perf_counter() - started
    session.precompute(session.num_slices // 2, radius=session.num_slices)
    return one


def test_session_close_drops_queued_encodes_and_returns_at_once(lite_model, ct_volume):
    session = Session(ct_volume, lite_model, axis=2, device="cpu")
    one = queue_every_slice(session)
    cached = len(session.features.cache)
    while len(session.features.cache) == cached:  # a background encode is running: close mid-queue
        time.sleep(0.005)
    queued_s = one * (session.num_slices - len(session.features.cache))
    started = time.perf_counter()
    session.close()
    closed_s = time.perf_counter() - started
    queued = session.num_slices - len(session.features.cache)
    print(f"\nclose with {queued} encodes queued (about {queued_s:.1f} s of work, "
          f"{one * 1000:.0f} ms each): {closed_s * 1000:.0f} ms")
    assert queued_s > 2 * CLOSE_LIMIT_S, "too little queued work to tell a drain from a drop"
    assert closed_s < CLOSE_LIMIT_S
    assert session.features._worker.join(timeout=10 * one + 10), "the worker did not stop after its running step"
    assert len(session.features.cache) <= cached + 2, "queued encodes ran after the close"


def test_session_refuses_work_after_close(lite_model, ct_volume):
    session = Session(ct_volume, lite_model, axis=2, device="cpu")
    session.close()
    session.close()  # twice is harmless (the panel and scene close may both close it)
    try:
        session.precompute(0)
    except RuntimeError as exc:
        assert "closed" in str(exc)
    else:
        raise AssertionError("a closed session queued work")


EXIT_SCRIPT = """
import sys
sys.path.insert(0, {module!r})
from samed2.session import Session
from samed2.volume_files import load_volume
from samed2.weights import build_and_load

session = Session(load_volume({volume!r}), build_and_load("medsam-lite", {weights!r}), axis=1, device="cpu")
session.precompute(0, radius=0)
session.wait_idle()
session.precompute(50, radius=session.num_slices)  # minutes of work queued
if {close}:
    session.close()
print("closed")
"""


@pytest.mark.parametrize("close", [True, False], ids=["closed", "left-open"])
def test_process_exits_cleanly_with_queued_encodes(lite_file, close):
    """Before the fix the torch thread was still encoding at interpreter exit: "terminate called
    without an active exception" and an abort. A session left open is stopped at exit too."""
    script = textwrap.dedent(EXIT_SCRIPT).format(module=str(REPO / "SAMed2Slicer"), weights=str(lite_file),
                                                 volume=str(DATA / "totalseg" / "example_ct_sm.nii.gz"), close=close)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert "terminate called" not in result.stderr
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("closed")
