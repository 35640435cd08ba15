"""The Qt side shared by the module panel and the Segment Editor effect: first-run install,
the model, one Segmenter for the current volume and segmentation, prompt markups dragged or
deleted by the user, and propagation runs polled from a timer so the views stay responsive.

Every action reports failures in a dialog that says what to do next; nothing fails silently.
"""
import logging
import traceback
from contextlib import contextmanager

import qt
import slicer
import vtk
from slicer.util import VTKObservationMixin

from SAMed2SlicerLib import models
from SAMed2SlicerLib import prompts as markups
from SAMed2SlicerLib.install import TORCH_VERSION, InstallPlan, pip_install_function
from SAMed2SlicerLib.segmenter import BusyError, Segmenter

POLL_MS = 100
MARKUP_SETTLE_MS = 300
WARM_UP_SETTLE_MS = 400
MARKUP_EVENTS = (vtk.vtkCommand.ModifiedEvent, slicer.vtkMRMLMarkupsNode.PointModifiedEvent,
                 slicer.vtkMRMLMarkupsNode.PointRemovedEvent)


def _single_shot_timer(interval_ms, callback):
    timer = qt.QTimer()
    timer.setSingleShot(True)
    timer.setInterval(interval_ms)
    timer.connect("timeout()", callback)
    return timer


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
        self.settings = {"model": models.DEFAULT_MODEL, "device": "auto", "preset": "auto"}
        self.segmenter = None
        self.run = None
        self.listeners = []  # callables(message, progress or None)
        self._segmenter_key = None
        self._model = (None, None)  # (name, engine model)
        self._save_undo = None
        self._warm_up_view = None
        self._poll_timer = qt.QTimer()
        self._poll_timer.setInterval(POLL_MS)
        self._poll_timer.connect("timeout()", self._poll)
        self._markup_timer = _single_shot_timer(MARKUP_SETTLE_MS, self._apply_moved_prompts)
        self._warm_up_timer = _single_shot_timer(WARM_UP_SETTLE_MS, self._warm_up)
        self.addObserver(slicer.mrmlScene, slicer.vtkMRMLScene.StartCloseEvent, self._on_scene_closing)

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
        except Exception as error:  # shown to the user, with the traceback in the details
            logging.exception("%s failed", action)
            slicer.util.errorDisplay(f"{action} failed:\n\n{error}", detailedText=traceback.format_exc())

    # ---- first-run install ---------------------------------------------------------------

    @staticmethod
    def packages_ready():
        return not InstallPlan.for_this_python().needed

    def ensure_ready(self):
        """Install what is missing (asking once); True when the engine can be used."""
        plan = InstallPlan.for_this_python()
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
                install, _ = pip_install_function(slicer)
                install(plan.packages)
        remaining = InstallPlan.for_this_python()
        if remaining.needed:
            slicer.util.errorDisplay("Some packages are still missing after the installation:\n\n"
                                     + remaining.message().split("\n\n")[1]
                                     + "\n\nRestart Slicer and open SAMed-2 again.", windowTitle="SAMed-2 set-up")
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

    # ---- model and segmenter ---------------------------------------------------------------

    def configure(self, **settings):
        """Change model, device or preset; the next action rebuilds the segmenter."""
        if any(self.settings.get(k) != v for k, v in settings.items()):
            self.settings.update(settings)
            self.close_segmenter()

    def use_model(self, name, model):
        """Segment with an engine model built in Python (scripts, tests) under the name `name`."""
        self._model = (name, model)
        self.configure(model=name)

    def _engine_model(self):
        name = self.settings["model"]
        if self._model[0] != name:
            self._model = (None, None)
            self.notify(f"Loading {name}...")
            self._model = (name, models.load(name, models.weights_cache_dir()))
        return self._model[1]

    def segmenter_for(self, volume, segmentation):
        """The Segmenter for this volume and segmentation with the current settings."""
        if volume is None or segmentation is None:
            raise ValueError("choose a source volume and a segmentation in the segment editor first")
        key = (volume.GetID(), segmentation.GetID(), tuple(sorted(self.settings.items())))
        if self.segmenter is not None and key == self._segmenter_key:
            return self.segmenter
        if not self.packages_ready():
            raise RuntimeError("the Python packages SAMed-2 needs are not installed: accept their installation "
                               "when asked (or install them with the PyTorch Utils module and pip)")
        self.close_segmenter()
        self.segmenter = Segmenter(volume, segmentation, self._engine_model(), device=self.settings["device"],
                                   preset=self.settings["preset"])
        self._segmenter_key = key
        self.addObserver(volume, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, self._on_volume_changed)
        self._observe_prompts()
        return self.segmenter

    def close_segmenter(self):
        if self.segmenter is not None:
            self.removeObserver(self.segmenter.volume_node, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent,
                                self._on_volume_changed)
            for node in markups.prompt_nodes(self.segmenter.segmentation_node):
                self._unobserve_markup(node)
            self.segmenter.close()
        self.segmenter = None
        self._segmenter_key = None

    def _on_volume_changed(self, caller=None, event=None):
        self.close_segmenter()

    def _on_scene_closing(self, caller=None, event=None):
        self.close_segmenter()

    # ---- prompts ---------------------------------------------------------------------------

    def click(self, volume, segmentation, segment_id, slice_node, point_ras, positive, save_undo):
        if not self.ensure_ready():
            return
        with self.reporting("Segmenting the clicked slice"):
            segmenter = self.segmenter_for(volume, segmentation)
            self._save_undo = save_undo
            save_undo()
            written = segmenter.add_point(segment_id, slice_node, point_ras, positive)
            self._observe_prompts()
            self.notify(self._written_message(written))

    def box(self, volume, segmentation, segment_id, slice_node, corner_ras, opposite_ras, save_undo):
        if not self.ensure_ready():
            return
        with self.reporting("Segmenting the box"):
            segmenter = self.segmenter_for(volume, segmentation)
            self._save_undo = save_undo
            save_undo()
            written = segmenter.add_box(segment_id, slice_node, corner_ras, opposite_ras)
            self._observe_prompts()
            self.notify(self._written_message(written))

    @staticmethod
    def _written_message(written):
        slices = [f"{'ijk'[axis]} = {', '.join(map(str, indices))}" for axis, indices in written.items()]
        return "Segmented slice " + "; ".join(slices) if slices else "Nothing changed."

    def _observe_prompts(self):
        for node in markups.prompt_nodes(self.segmenter.segmentation_node):
            for event in MARKUP_EVENTS:
                if not self.hasObserver(node, event, self._on_markup_changed):
                    self.addObserver(node, event, self._on_markup_changed)

    def _unobserve_markup(self, node):
        for event in MARKUP_EVENTS:
            self.removeObserver(node, event, self._on_markup_changed)

    def _on_markup_changed(self, caller=None, event=None):
        self._markup_timer.start()  # settles while a point is being dragged

    def _apply_moved_prompts(self):
        if self.segmenter is None or self.segmenter.running is not None:
            return
        with self.reporting("Updating the segment after moving prompts"):
            if not self.segmenter.pending_prompts():
                return
            if self._save_undo is not None:
                self._save_undo()
            self.notify(self._written_message(self.segmenter.apply_prompts()))

    def view_changed(self, volume, segmentation, slice_node):
        """A slice view moved: encode the slices around it soon (only once a segmenter exists)."""
        if self.segmenter is not None and self._segmenter_key[:2] == (volume.GetID(), segmentation.GetID()):
            self._warm_up_view = slice_node
            self._warm_up_timer.start()

    def _warm_up(self):
        if self.segmenter is None or self.segmenter.running is not None or self._warm_up_view is None:
            return
        try:
            self.segmenter.warm_up(self._warm_up_view)
        except Exception as error:  # an oblique view: nothing to precompute, and nothing is wrong
            logging.debug("no warm-up for this view: %s", error)

    # ---- propagation -----------------------------------------------------------------------

    def propagate(self, volume, segmentation, segment_ids, slice_node, options, save_undo):
        """Start a run; `options` = direction, start, stop, stop_after_absent (see Segmenter)."""
        if not self.ensure_ready():
            return
        with self.reporting("Propagation"):
            segmenter = self.segmenter_for(volume, segmentation)
            axis = segmenter.axis_of_view(slice_node)
            self._save_undo = save_undo
            save_undo()
            self.run = segmenter.propagate(axis, segment_ids, **options)
            self._poll_timer.start()
            self.notify("Propagating...", self.run.progress())

    def cancel(self):
        if self.run is not None:
            self.run.cancel()
            self.notify("Cancelling after the current slice...")

    def _poll(self):
        progress = self.run.poll()
        if not progress.finished:
            self.notify(f"Propagating: slice {progress.index} ({progress.done} done)", progress)
            return
        self._poll_timer.stop()
        error = self.run.error
        if error is not None:
            slicer.util.errorDisplay(f"Propagation stopped after {progress.done} slices:\n\n{error}",
                                     detailedText="".join(traceback.format_exception(type(error), error, error.__traceback__)))
        cancelled = " (cancelled; the slices done are kept)" if progress.cancelled else ""
        self.notify(f"Propagated {progress.done} slices{cancelled}. Correct any slice with more prompts or the "
                    "paint tools, then propagate again: prompted and corrected slices are kept.", progress)
        self._markup_timer.start()  # prompts moved during the run
