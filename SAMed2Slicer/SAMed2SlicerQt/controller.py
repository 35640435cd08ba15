"""The Qt side shared by the module panel and the Segment Editor effect: the first-run install
dialogs, the timers (job polling, settling of prompts moved by scripts, warm-up) and error
dialogs. What happens is the interaction layer's (SAMed2SlicerLib.interaction), over the module's
Logic, which the module gives it (`Controller.get(logic)`): nothing here builds the panel.

Every action reports a failure once, in a dialog that says what to do next, with the log in its
details; nothing fails silently.
"""
import logging
import traceback
from contextlib import contextmanager

import qt
import slicer

from SAMed2SlicerLib.install import DICOM_REQUIREMENTS, TORCH_VERSION, install_function, stale_modules
from SAMed2SlicerLib.interaction import Interaction
from SAMed2SlicerLib.jobs import TICK_INTERVAL_MS
from SAMed2SlicerLib.messages import INSTALL_FIRST, INSTALLING, gui_text

MARKUP_SETTLE_MS = 300
WARM_UP_SETTLE_MS = 400


def _timer(interval_ms, callback, single_shot):
    timer = qt.QTimer()
    timer.setSingleShot(single_shot)
    timer.setInterval(interval_ms)
    timer.connect("timeout()", callback)
    return timer


def show_error(action, error):
    """One dialog for a failed action, with the traceback in its details and in the log."""
    logging.error("%s failed", action, exc_info=error)
    _error_dialog(f"{action} failed:\n\n{gui_text(str(error))}", error)


def _error_dialog(text, error):
    """A failure's dialog, with the traceback in its details."""
    details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    slicer.util.errorDisplay(text, detailedText=details)


class Controller:
    """One per Slicer session: `Controller.get(logic)` the first time (the module's Logic),
    `Controller.get()` afterwards."""

    _instance = None

    @classmethod
    def get(cls, logic=None):
        if cls._instance is None:
            if logic is None:  # the Segment Editor module's effect came first: the module's Logic, no panel
                from SAMed2Slicer import moduleLogic

                logic = moduleLogic()
            cls._instance = cls(logic)
        return cls._instance

    @classmethod
    def existing(cls):
        """The Controller if one was made (None at exit, before any)."""
        return cls._instance

    def __init__(self, logic):
        self.logic = logic
        self.interaction = Interaction(logic, show_error=self._show_error, settle=self._settle, poll=self.watch_jobs)
        self._job_timer = _timer(TICK_INTERVAL_MS, self._tick, single_shot=False)
        self._markup_timer = _timer(MARKUP_SETTLE_MS, self.interaction.apply_moved_prompts, single_shot=True)
        self._warm_up_timer = _timer(WARM_UP_SETTLE_MS, self._warm_up, single_shot=True)
        self._warm_up_view = None

    def _show_error(self, text, error=None):
        """A failure in a dialog; something the user can change (no `error`) in the status line."""
        if error is None:
            self.notify(text)
        else:
            _error_dialog(text, error)

    @property
    def listeners(self):
        return self.interaction.listeners

    @property
    def run(self):
        return self.interaction.run

    def notify(self, message, progress=None):
        self.interaction.notify(message, progress)

    @contextmanager
    def reporting(self, action):
        """Wait cursor around a step; a refusal is a status line, a failure a dialog."""
        with slicer.util.WaitCursor(), self.interaction.reporting(action):
            yield

    # ---- first-run install ---------------------------------------------------------------

    def packages_ready(self):
        return not self.interaction.needs_install()

    def ensure_ready(self, dicom=False):
        """Install what is missing (asking once); True when the engine (with `dicom`: and
        DICOM-SEG export) can be used. Asked again during an installation: says so, and no."""
        return self.interaction.ensure_ready(self._install, dicom)

    def dicom_packages_loaded(self):
        """False (and the offer of a restart) while this process still runs a DICOM package that
        the installation replaced: Slicer 5.10 imported its own pydicom 2.4 at start-up."""
        stale = stale_modules(DICOM_REQUIREMENTS)
        if not stale:
            return True
        if slicer.util.confirmOkCancelDisplay(
                f"The DICOM packages SAMed-2 needs were installed, but Slicer still runs {', '.join(stale)}: DICOM-SEG "
                "export works after a restart. Restart Slicer now? (Save your scene first.)",
                windowTitle="SAMed-2 set-up"):
            slicer.util.restart()
        return False

    def _post_install(self):
        """Called from a mouse handler: the installation (minutes, with the event loop pumped by
        pip's output) starts after the handler has returned, once."""
        if self.interaction.installing:
            self.notify(INSTALLING)
            return
        qt.QTimer.singleShot(0, self.ensure_ready)
        self.notify(INSTALL_FIRST)

    def _install(self, plan):
        if plan.blocker():
            slicer.util.errorDisplay(plan.blocker(), windowTitle="SAMed-2 set-up")
            return False
        if not slicer.util.confirmOkCancelDisplay(plan.message(), windowTitle="SAMed-2 set-up"):
            return False
        dialog = slicer.util.createProgressDialog(  # modal: no clicks into the views while pip pumps events
            labelText="Installing the Python packages SAMed-2 needs: this takes a few minutes",
            maximum=0, windowTitle="SAMed-2 set-up", windowModality=qt.Qt.ApplicationModal)
        dialog.setCancelButton(None)  # pip cannot be stopped half-way
        dialog.show()
        slicer.app.processEvents()
        try:
            if plan.torch:
                _install_torch()
            if plan.packages:
                install, _ = install_function(slicer)
                install(plan.packages)
        finally:
            dialog.close()
        return True

    # ---- background jobs -------------------------------------------------------------------

    def watch_jobs(self):
        """Poll the Logic's jobs until none is left (see SAMed2SlicerLib.jobs on the GIL)."""
        self._job_timer.start()

    def _tick(self):
        if not self.interaction.tick():
            self._job_timer.stop()

    # ---- prompts ---------------------------------------------------------------------------

    def click(self, volume, segmentation, segment_id, slice_node, point_ras, positive, before_write):
        if self.interaction.needs_install():
            return self._post_install()
        with slicer.util.WaitCursor():
            self.interaction.click(volume, segmentation, segment_id, slice_node, point_ras, positive, before_write)

    def box(self, volume, segmentation, segment_id, slice_node, corner_ras, opposite_ras, before_write):
        if self.interaction.needs_install():
            return self._post_install()
        with slicer.util.WaitCursor():
            self.interaction.box(volume, segmentation, segment_id, slice_node, corner_ras, opposite_ras, before_write)

    def _settle(self, apply_moved_prompts):
        self._markup_timer.start()  # restarted by each change; its timeout applies them once settled

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

    def propagate(self, volume, segmentation, segment_ids, slice_node, options, before_write):
        """Start a run; `options`: a samed2.choices.PropagationOptions."""
        if not self.ensure_ready():
            return
        self.interaction.propagate(volume, segmentation, segment_ids, slice_node, options, before_write)

    def cancel(self):
        self.interaction.cancel()


def _install_torch():
    import PyTorchUtils

    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=TORCH_VERSION)
    if torch is None:
        raise RuntimeError("PyTorch was not installed: install it in the PyTorch Utils module, then try again")
