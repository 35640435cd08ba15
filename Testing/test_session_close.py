"""Closing a session never waits for its queued background encodes: a settings change, a new
volume, a scene close or quitting Slicer closes segmenters on the main thread. A real session
(MedSAM-Lite, the published weights) with every slice queued for background encoding."""
import subprocess
import sys
import textwrap
import time

from samed2.session import Session

from conftest import DATA, REPO

CLOSE_LIMIT_S = 2.0  # the bound the panel needs; before the fix closing took 30 s here


def queue_every_slice(session):
    """Queue a background encode of every slice; returns the seconds one encode takes."""
    started = time.perf_counter()
    session.precompute(0, radius=0)
    session.wait_idle()
    one = time.perf_counter() - started
    session.precompute(session.num_slices // 2, radius=session.num_slices)
    return one


def test_session_close_drops_queued_encodes_and_returns_at_once(lite_model, ct_volume):
    session = Session(ct_volume, lite_model, axis=2, device="cpu")
    one = queue_every_slice(session)
    queued_s = one * (session.num_slices - 1)
    started = time.perf_counter()
    session.close()
    closed_s = time.perf_counter() - started
    print(f"\nclose with {session.num_slices - 1} encodes queued (about {queued_s:.1f} s of work, "
          f"{one * 1000:.0f} ms each): {closed_s * 1000:.0f} ms")
    assert queued_s > 3 * CLOSE_LIMIT_S, "too little queued work to tell a drain from a drop"
    assert closed_s < CLOSE_LIMIT_S
    assert len(session.cache) < session.num_slices // 2, "the queued encodes ran"
    assert not session._worker._thread.is_alive()


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
session.close()
print("closed")
"""


def test_process_exits_cleanly_after_closing_with_queued_encodes(lite_file):
    """Before the fix the torch thread was still encoding at interpreter exit: "terminate called
    without an active exception" and an abort."""
    script = textwrap.dedent(EXIT_SCRIPT).format(module=str(REPO / "SAMed2Slicer"), weights=str(lite_file),
                                                 volume=str(DATA / "totalseg" / "example_ct_sm.nii.gz"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert "terminate called" not in result.stderr
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("closed")
