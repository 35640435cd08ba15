"""The Qt side shared by the module panel and the Segment Editor effect: the first-run install
dialogs, the timer that polls the Logic's background jobs, the settle timers for dragged prompts
and for warm-up, and error dialogs. Everything else is the Logic's (SAMed2SlicerLib.logic).

Every action reports a failure once, in a dialog that says what to do next, with the log in its
details; nothing fails silently.
"""
import logging
import traceback
from contextlib import contextmanager

import qt
import slicer
import vtk
from slicer.util import VTKObservationMixin

from SAMed2SlicerLib.install import TORCH_VERSION, install_function
from SAMed2SlicerLib.jobs import TICK_INTERVAL_MS
from SAMed2SlicerLib.segmenter import BusyError

MODULE_NAME = "SAMed2Slicer"
MARKUP_SETTLE_MS = 300
WARM_UP_SETTLE_MS = 400
MARKUP_EVENTS = (slicer.vtkMRMLMarkupsNode.PointModifiedEvent, slicer.vtkMRMLMarkupsNode.PointRemovedEvent,
                 vtk.vtkCommand.ModifiedEvent)


def _timer(interval_ms, callback, single_shot):
    timer = qt.QTimer()
    timer.setSingleShot(single_shot)
    timer.setInterval(interval_ms)
    timer.connect("timeout()", callback)
    return timer


def show_error(action, error):
    """One dialog for a failure, with the traceback in its details and in the log."""
    details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    logging.error("%s failed:\n%s", action, details)
    slicer.util.errorDisplay(f"{action} failed:\n\n{error}", detailedText=details)


class Controller(VTKObservationMixin):
    """One per Slicer session (`Controller.get()`)."""

    _instance = None

    @classmethod
    def get(cls):
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self):
        VTKObservationMixin.__init__(self)
        self.run = None  # the propagation job going on
        self.listeners = []  # callables(message, progress or None)
        self._save_undo = None
        self._warm_up_view = None
        self._job_timer = _timer(TICK_INTERVAL_MS, self._tick, single_shot=False)
        self._markup_timer = _timer(MARKUP_SETTLE_MS, self._apply_moved_prompts, single_shot=True)
        self._warm_up_timer = _timer(WARM_UP_SETTLE_MS, self._warm_up, single_shot=True)
        slicer.app.connect("aboutToQuit()", self.shutdown)
        self.addObserver(slicer.mrmlScene, slicer.vtkMRMLScene.StartCloseEvent, self._on_scene_closing)

    @property
    def logic(self):
        """The module's Logic (the one `slicer.util.getModuleLogic("SAMed2Slicer")` returns)."""
        return slicer.util.getModuleLogic(MODULE_NAME)

    def shutdown(self):
        """Slicer quits: stop the jobs' threads and free the engine."""
        self._job_timer.stop()
        self.logic.close()

    # ---- messages ------------------------------------------------------------------------

    def notify(self, message, progress=None):
        for listener in list(self.listeners):
            listener(message, progress)

    @contextmanager
    def reporting(self, action):
        """Show what went wrong (the engine's messages say what to do), never raise."""
        try:
            with slicer.util.WaitCursor():
                yield
        except BusyError as error:
            self.notify(str(error))
        except Exception as error:  # shown to the user once, with the traceback in the details
            show_error(action, error)

    # ---- first-run install ---------------------------------------------------------------

    def packages_ready(self):
        return not self.logic.install_plan().needed

    def ensure_ready(self, dicom=False):
        """Install what is missing (asking once); True when the engine (with `dicom`: and
        DICOM-SEG export) can be used."""
        plan = self.logic.install_plan(dicom)
        if not plan.needed:
            return True
        if plan.blocker():
            slicer.util.errorDisplay(plan.blocker(), windowTitle="SAMed-2 set-up")
            return False
        if not slicer.util.confirmOkCancelDisplay(plan.message(), windowTitle="SAMed-2 set-up"):
            self.notify("Nothing was installed: SAMed-2 cannot segment without these packages.")
            return False
        with self.reporting("Installing the packages SAMed-2 needs (check the network and the Python console)"):
            if plan.torch:
                self._install_torch()
            if plan.packages:
                install, _ = install_function(slicer)
                install(plan.packages)
        remaining = self.logic.install_plan(dicom)
        if remaining.needed:
            slicer.util.errorDisplay(remaining.after_install_message(), windowTitle="SAMed-2 set-up")
        return not remaining.needed

    @staticmethod
    def _install_torch():
        import PyTorchUtils

        dialog = slicer.util.createProgressDialog(
            labelText="Installing PyTorch (the CUDA, MPS or CPU build for this computer): this takes a few minutes",
            maximum=0, windowTitle="SAMed-2 set-up")
        slicer.app.processEvents()
        try:
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                                torchVersionRequirement=TORCH_VERSION)
        finally:
            dialog.close()
        if torch is None:
            raise RuntimeError("PyTorch was not installed: install it in the PyTorch Utils module, then try again")

    # ---- background jobs -------------------------------------------------------------------

    def watch_jobs(self):
        """Poll the Logic's jobs until none is left (see SAMed2SlicerLib.jobs on the GIL)."""
        self._job_timer.start()

    def _tick(self):
        try:
            self.logic.jobs.tick()
        except Exception as error:  # a handler failed: stop polling rather than fail every tick
            self._job_timer.stop()
            show_error("Updating the background work", error)
        if not self.logic.jobs.jobs:
            self._job_timer.stop()

    # ---- prompts ---------------------------------------------------------------------------

    def click(self, volume, segmentation, segment_id, slice_node, point_ras, positive, save_undo):
        self._prompt("Segmenting the clicked slice", save_undo, self.logic.click, volume, segmentation,
                     segment_id, slice_node, point_ras, positive)

    def box(self, volume, segmentation, segment_id, slice_node, corner_ras, opposite_ras, save_undo):
        self._prompt("Segmenting the box", save_undo, self.logic.box, volume, segmentation, segment_id,
                     slice_node, corner_ras, opposite_ras)

    def _prompt(self, action, save_undo, add, *args):
        """Run a prompt; the Segment Editor's undo state is saved just before it writes voxels
        (never for a prompt that is refused or writes nothing)."""
        if not self.ensure_ready():
            return
        with self.reporting(action):
            self._save_undo = save_undo
            written = add(*args, before_write=save_undo)
            self._observe_prompts()
            self.notify(self.logic.prompt_message(written))

    def _observe_prompts(self):
        for node in self.logic.prompt_nodes():
            for event in MARKUP_EVENTS:
                if not self.hasObserver(node, event, self._on_markup_changed):
                    self.addObserver(node, event, self._on_markup_changed)

    def _on_markup_changed(self, caller=None, event=None):
        self._markup_timer.start()  # settles while a point is being dragged

    def _apply_moved_prompts(self):
        with self.reporting("Updating the segment after moving prompts"):
            written = self.logic.apply_moved_prompts(before_write=self._save_undo)
            if written is not None:
                self.notify(self.logic.prompt_message(written))

    def _on_scene_closing(self, caller=None, event=None):
        self.removeObservers(self._on_markup_changed)  # the prompt nodes go with the scene

    def view_changed(self, volume, segmentation, slice_node):
        """A slice view moved: encode the slices around it soon (only once a segmenter exists)."""
        if self.logic.segmenter is not None:
            self._warm_up_view = (volume, segmentation, slice_node)
            self._warm_up_timer.start()

    def _warm_up(self):
        if self._warm_up_view is None:
            return
        try:
            if self.logic.warm_up(*self._warm_up_view) is not None:
                self.watch_jobs()
        except Exception as error:  # an oblique view: nothing to precompute, and nothing is wrong
            logging.debug("no warm-up for this view: %s", error)

    # ---- propagation -----------------------------------------------------------------------

    def propagate(self, volume, segmentation, segment_ids, slice_node, options, save_undo):
        """Start a run; `options` = direction, start, stop, stop_after_absent (see Segmenter)."""
        if not self.ensure_ready():
            return
        with self.reporting("Propagation"):
            self._save_undo = save_undo
            self.run = self.logic.propagate(volume, segmentation, slice_node, segment_ids, before_write=save_undo,
                                            on_progress=self._on_progress, on_end=self._on_propagated, **options)
            self.watch_jobs()
            self.notify("Propagating...", self.run.progress())

    def cancel(self):
        if self.run is not None and not self.run.finished:
            self.run.cancel()
            self.notify("Cancelling after the current slice...")

    def _on_progress(self, job, progress):
        self.notify(f"Propagating: slice {progress.index} ({progress.done} done)", progress)

    def _on_propagated(self, job):
        progress = job.progress()
        if job.error is not None:
            show_error(f"Propagation (stopped after {progress.done} slices)", job.error)
        cancelled = " (cancelled; the slices done are kept)" if progress.cancelled else ""
        self.notify(f"Propagated {progress.done} slices{cancelled}. Correct any slice with more prompts or the "
                    "paint tools, then propagate again: prompted and corrected slices are kept.", progress)
        self._markup_timer.start()  # prompts moved during the run

