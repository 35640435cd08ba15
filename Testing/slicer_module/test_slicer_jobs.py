"""Background jobs against Slicer's main thread: propagation keeps its pace while the GUI idles,
the GUI is never held long, and a failure while results are written is reported once.

Slicer's main thread holds Python's GIL while it waits in Qt's event loop (PythonQt and CTK's
Python manager never release it). `run_like_slicers_main_thread` imitates that thread: it
waits for the next timer timeout in libc's usleep called through ctypes.PyDLL (which keeps the
GIL, as the event loop's poll() does), then calls the job timer's callback, scheduling timeouts
as Qt does (QTimerInfoList::activateTimers: the next timeout is the last one plus the interval,
or the activation time plus the interval when that has passed; intervals up to 20 ms are
precise timers). Qt itself is not available here; the callback is the module's own
JobPoller.tick, which the module's QTimer calls.

The model is the golden tiny SAMed-2 (random weights, the real layout; see test_slicer_logic).
"""
import ctypes
import ctypes.util
import time

import numpy as np
import pytest

from samed2.choices import PropagationOptions
from SAMed2SlicerLib.jobs import TICK_INTERVAL_MS, BackgroundJob, JobPoller
from SAMed2SlicerLib.segmenter import Segmenter

from ct_scene import CLICK, add_segmentation, segment_voxels, world_point

LIBC = ctypes.PyDLL(ctypes.util.find_library("c"))  # PyDLL: the GIL stays held during calls
MAX_SLOWDOWN = 1.5  # the bound; measured: docs/DEVELOPMENT.md, "Slicer's main thread..."
MAX_GUI_BLOCK_S = 0.05  # the bound. A tick waits at most TICK_WAIT_S (20 ms) or writes (5-20 ms of the
# main thread's CPU here). Wall-clock blocks also hold time the OS gave other processes: at a load average of 9 on
# this 2-core host single ticks took up to 290 ms, so the bound is asserted on the median tick and, for every tick,
# on the main thread's own CPU time (what the design controls), with the longest wall-clock tick reported.
RUNS = 3  # of each kind, alternating; the best of each is compared (the host is shared)


def run_like_slicers_main_thread(poller, interval_ms=TICK_INTERVAL_MS):
    """Drive `poller` as Slicer's main thread drives the module's job timer; returns how long
    each timer callback held the thread: (wall-clock seconds, main-thread CPU seconds) per call."""
    interval = interval_ms / 1000
    timeout = time.monotonic() + interval
    blocks = []
    while poller.jobs:
        idle = timeout - time.monotonic()
        if idle > 0:
            LIBC.usleep(int(idle * 1e6))  # the event loop waiting, GIL held
        activated = time.monotonic()
        timeout += interval
        if timeout < activated:
            timeout = activated + interval
        cpu = time.thread_time()
        poller.tick()
        blocks.append((time.monotonic() - activated, time.thread_time() - cpu))
    return blocks


def propagate_whole_volume(ct, views, model, drive):
    """Click the liver, propagate through every slice; (seconds, callback blocks, voxels)."""
    segmentation = add_segmentation(ct, "liver")
    with Segmenter(ct, segmentation, model, device="cpu") as segmenter:
        segmenter.add_point("liver", views["Red"], world_point(CLICK))
        started = time.perf_counter()
        job = segmenter.propagate(2, ["liver"], PropagationOptions("both", stop_after_absent=0))
        blocks = drive(job)
        elapsed = time.perf_counter() - started
        assert job.error is None and job.progress().done == ct.GetImageData().GetDimensions()[2] - 1
    return elapsed, blocks, segment_voxels(segmentation, "liver", ct)


def free_main_thread(job):
    job.wait(timeout_s=300)
    return []


def slicers_main_thread(job):
    poller = JobPoller()
    poller.add(job)
    return run_like_slicers_main_thread(poller)


@pytest.mark.slow
def test_mrml_propagation_keeps_its_pace_while_slicers_main_thread_idles(ct, abdomen, views, model):
    propagate_whole_volume(ct, views, model, free_main_thread)  # warm-up: first-call costs
    free, slicer_like = [], []
    for _ in range(RUNS):
        free.append(propagate_whole_volume(ct, views, model, free_main_thread))
        slicer_like.append(propagate_whole_volume(ct, views, model, slicers_main_thread))
    np.testing.assert_array_equal(free[0][2], slicer_like[0][2])
    slowdown = min(s[0] for s in slicer_like) / min(f[0] for f in free)
    ticks = [tick for run in slicer_like for tick in run[1]]
    median_block = float(np.median([wall for wall, _ in ticks]))
    most_cpu = max(cpu for _, cpu in ticks)
    report = (f"free main thread {min(f[0] for f in free):.2f} s, Slicer-like {min(s[0] for s in slicer_like):.2f} s "
              f"(x{slowdown:.2f}); GUI blocks: median {1000 * median_block:.0f} ms, longest "
              f"{1000 * max(wall for wall, _ in ticks):.0f} ms, "
              f"most main-thread CPU in one tick {1000 * most_cpu:.0f} ms")
    print(report)
    assert slowdown <= MAX_SLOWDOWN, report
    assert median_block <= MAX_GUI_BLOCK_S and most_cpu <= MAX_GUI_BLOCK_S, report


def test_slicer_job_that_fails_to_write_reports_once_and_stops():
    """A write that fails (a segment deleted mid-propagation) cancels the work, is taken no
    further and is reported by one on_end call."""
    taken, ended = [], []

    def work(job):
        for index in range(1000):
            if job.cancelled:
                return index
            job.emit(index)
            time.sleep(0.001)

    def take(batch):
        taken.append(batch)
        raise ValueError("segment 'liver' is not in 'segmentation'")

    poller = JobPoller()
    job = poller.add(BackgroundJob("propagation", work, take).start(), on_end=ended.append)
    while poller.jobs:
        poller.tick()
    assert ended == [job] and len(taken) == 1
    assert isinstance(job.error, ValueError) and job.cancelled and job.result < 1000
    with pytest.raises(ValueError, match="is not in"):
        job.wait()


def test_mrml_deleting_the_segment_mid_propagation_ends_the_run_with_that_error(segmenter, ct, abdomen, views):
    segmenter.add_point("liver", views["Red"], world_point(CLICK))
    job = segmenter.propagate(2, ["liver"], PropagationOptions("both", stop_after_absent=0))
    abdomen.GetSegmentation().RemoveSegment("liver")
    with pytest.raises(ValueError, match="segment 'liver' is not in"):
        job.wait(timeout_s=120)
    assert job.progress().finished and segmenter.running is None
