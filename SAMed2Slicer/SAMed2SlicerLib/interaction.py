"""What a SAMed-2 front end does between the user and the Logic, the same in the Slicer panel, the
Segment Editor effect and the web page: the ready state (packages installed, model loaded, with
a guard against a second install), the propagation run and the polling of the background jobs,
prompt moves (deferred during a run), watching every prompt markup in the scene (also those a
scene load restores, and deleted ones), undo through the editor the user is in, the segment's
confidence per slice and its least confident slice, and one set of user messages (their texts
are SAMed2SlicerLib.messages). No Qt: each front end gives it a timer, a way to show messages
and errors, and turns its widgets' events into these calls.
"""
import logging
from contextlib import contextmanager
from typing import Callable, List, Optional

import slicer
import vtk
from slicer.util import VTKObservationMixin

from samed2.choices import PropagationOptions
from samed2.errors import InputError
from SAMed2SlicerLib import messages, model_weights
from SAMed2SlicerLib.confidence import least_confident
from SAMed2SlicerLib.jobs import BackgroundJob
from SAMed2SlicerLib.logic import LOAD_JOB
from SAMed2SlicerLib.prompts import BOX, INCLUDE, ROLE, ROLES, SEGMENTATION_REFERENCE, VOLUME_REFERENCE
from SAMed2SlicerLib.segmenter import BusyError
from SAMed2SlicerLib.segments import Target, read_slices

log = logging.getLogger(__name__)

PROMPT_MARKUP_EVENTS = (slicer.vtkMRMLMarkupsNode.PointModifiedEvent, slicer.vtkMRMLMarkupsNode.PointRemovedEvent,
                        vtk.vtkCommand.ModifiedEvent)


def start_tool(model) -> str:
    """The prompt tool to start with: Box for a model trained on boxes only (a click alone gives it
    nothing), else Include."""
    return BOX if getattr(model, "needs_box", False) else INCLUDE


class Interaction(VTKObservationMixin):
    """One front end's state over one Logic.

    `show_error(text, error)` presents a failure (a dialog, the page's error line); without it a
    failure becomes a status message. `settle(callback)` calls back once programmatic prompt
    moves have settled (a single-shot timer restarted on each call); without it, moves wait for
    `apply_moved_prompts()`. `poll()` starts the front end's polling (its timer calls `tick()`
    until it returns False) when a background job starts. `gui` maps command-line commands in
    messages to the module's buttons. Status messages go to every callable in `listeners` as
    `(message, progress or None)`; every callable in `model_listeners` gets the engine model once
    it is loaded.
    """

    def __init__(self, logic, show_error: Optional[Callable] = None, settle: Optional[Callable] = None,
                 poll: Optional[Callable] = None, gui: bool = True):
        VTKObservationMixin.__init__(self)
        self.logic = logic
        self.listeners: List[Callable] = []
        self.model_listeners: List[Callable] = []
        self.show_error = show_error
        self.settle = settle
        self.poll = poll
        self.gui = gui
        self.installing = False
        self.run: Optional[BackgroundJob] = None  # the propagation going on
        self.loading: Optional[BackgroundJob] = None  # the model load going on
        self.before_write: Optional[Callable] = None  # the active editor's saveStateForUndo
        self._waiting = []  # (then, failed) of the actions made while the model loads
        self._moved_during_run = False
        self._dragged = set()  # IDs of prompt nodes a drag is moving
        self._moved_prompts = set()  # (volume, segmentation) of prompts changed since the last apply
        self._quiet = False  # our own prompt writes are running: their markup events are not moves
        logic.jobs.on_error = lambda job, error: self.report(f"Updating the {job.name}", error)
        self._watch_scene()

    # ---- messages --------------------------------------------------------------------------

    def notify(self, message, progress=None) -> None:
        """Show a status line in every listener; a listener that fails (its widgets are gone) is
        dropped, and the others still hear it."""
        for listener in list(self.listeners):
            try:
                listener(message, progress)
            except Exception:
                log.exception("a SAMed-2 status listener failed; it is removed")
                self.listeners.remove(listener)

    def message_of(self, error) -> str:
        text = str(error) or type(error).__name__
        return messages.gui_text(text) if self.gui else text

    def report(self, action, error) -> None:
        """A failure, once, in the front end's own way (with `error` for its details)."""
        text = f"{action} failed: {self.message_of(error)}"
        log.error(text, exc_info=error)
        if self.show_error is None:
            self.notify(text)
        else:
            self.show_error(text, error)

    @contextmanager
    def reporting(self, action):
        """Run a step; a refusal (a run is going on) is a status line, a failure is reported."""
        try:
            yield
        except BusyError as error:
            self.notify(str(error))
        except Exception as error:  # reported once, with its details
            self.report(action, error)

    # ---- ready state -----------------------------------------------------------------------

    def needs_install(self, dicom=False) -> bool:
        return self.installing or self.logic.install_plan(dicom).needed

    def ensure_ready(self, install, dicom=False) -> bool:
        """True when the engine (with `dicom`: and DICOM-SEG export) can be used; else runs
        `install(plan)` (the front end asks and installs, True when it did) once at a time:
        asked again meanwhile, it says the installation is in progress and starts nothing."""
        if self.installing:
            self.notify(messages.INSTALLING)
            return False
        plan = self.logic.install_plan(dicom)
        if not plan.needed:
            return True
        self.installing = True
        try:
            with self.reporting("Installing the packages SAMed-2 needs (check the network and the Python console)"):
                if not install(plan):
                    self.notify(messages.NOT_INSTALLED)
                    return False
        finally:
            self.installing = False
        remaining = self.logic.install_plan(dicom)
        if remaining.needed:
            self.report_problem(remaining.after_install_message())
        return not remaining.needed

    def load_model(self, then=None, failed=None) -> Optional[BackgroundJob]:
        """Load the chosen model and probe its precision in the background ("Loading model ..."),
        then call `then()`; on failure `failed()` after the report. Actions asked for meanwhile
        wait in order for the one load. At once when the model is loaded."""
        if self.logic.model_ready():
            if then is not None:
                then()
            return None
        if self.loading is None:
            model = self.logic.model_name()
            self.loading = self.logic.jobs.add(BackgroundJob(LOAD_JOB, lambda job: self.logic.load_engine()).start(),
                                               on_end=lambda job: self._loaded(job, model))
            self._polling()
            self.notify(messages.LOADING.format(model=model))
        self._waiting.append((then, failed))
        return self.loading

    def preload(self) -> None:
        """Start loading the model when the editor is opened, if it can load (packages installed,
        weights in the cache): the first prompt then waits less. Else nothing, silently."""
        if self.installing or self.logic.model_ready() or self.logic.install_plan().needed:
            return
        if model_weights.is_cached(self.logic.model_name(), self.logic.cache_dir):
            self.load_model()

    def _loaded(self, job, model):
        self.loading = None
        waiting, self._waiting = self._waiting, []
        if job.error is not None:
            self.report(f"Loading model {model}", job.error)
            for _, failed in waiting:
                if failed is not None:
                    failed()
        elif not self.logic.model_ready():  # the settings changed meanwhile: load the new choice
            for then, failed in waiting:
                self.load_model(then, failed)
        else:
            self.notify(messages.LOADED.format(model=model, hint=messages.first_prompt(self.logic.engine_model())))
            for listener in list(self.model_listeners):
                listener(self.logic.engine_model())
            for then, _ in waiting:
                if then is not None:
                    then()

    # ---- background jobs -------------------------------------------------------------------

    def tick(self) -> bool:
        """Poll the jobs once (what the front end's timer runs); whether to keep polling."""
        return self.logic.jobs.tick()

    def _polling(self):
        if self.poll is not None and self.logic.jobs.jobs:
            self.poll()

    @property
    def running(self) -> bool:
        return self.run is not None and not self.run.finished

    # ---- prompts ---------------------------------------------------------------------------

    def click(self, volume, segmentation, segment_id, slice_node, point_ras, positive=True, before_write=None):
        self._prompt("Segmenting the clicked slice", before_write, self.logic.click, volume, segmentation,
                     segment_id, slice_node, point_ras, positive)

    def box(self, volume, segmentation, segment_id, slice_node, corner_ras, opposite_ras, before_write=None):
        self._prompt("Segmenting the box", before_write, self.logic.box, volume, segmentation, segment_id,
                     slice_node, corner_ras, opposite_ras)

    def _prompt(self, action, before_write, add, volume, segmentation, segment_id, *where):
        """A prompt: after the model is loaded (in the background, with the first slices
        encoded), the segment's slice is written; the editor's undo state is saved just before
        (never for a prompt that is refused or writes nothing)."""
        if self.installing:
            self.notify(messages.INSTALLING)
            return
        if not self.logic.model_ready():
            self.load_model(lambda: self._encode_then(action, before_write, add, volume, segmentation, segment_id,
                                                      *where))
            return
        with self.reporting(action):
            with self._own_writes():
                written = add(volume, segmentation, segment_id, *where,
                              before_write=before_write or self._editor_undo())
            self.watch_prompts()
            self._say_written(written, segmentation, volume, segment_id)

    def _encode_then(self, action, before_write, add, volume, segmentation, segment_id, slice_node, *where):
        """The first prompt after a model load: encode its slices in the background, then prompt."""
        def prompt(job=None):
            self._prompt(action, before_write, add, volume, segmentation, segment_id, slice_node, *where)

        warm_up = None
        try:
            self.logic.segmenter_for(volume, segmentation)
            warm_up = self.logic.warm_up(volume, segmentation, slice_node, on_end=prompt)
        except Exception as error:  # e.g. an oblique view: the prompt itself says what is wrong
            log.debug("no encoding ahead of the first prompt: %s", error)
        if warm_up is None:
            prompt()
        else:
            self._polling()

    def _say_written(self, written, segmentation, volume, segment_id):
        empty = [f"{'ijk'[axis]} = {index}" for axis, indices in written.items()
                 for index, mask in read_slices(Target(segmentation, segment_id, volume, axis), indices).items()
                 if not mask.any()]
        if empty:
            self.report_problem(f"The model found nothing there (slice {', '.join(empty)}): click inside the object, "
                                "or put a box around it.")
        else:
            self.notify(self.logic.prompt_message(written))

    def report_problem(self, text) -> None:
        """Something the user should change, not a failure of the program: `show_error(text, None)`."""
        if self.show_error is None:
            self.notify(text)
        else:
            self.show_error(text, None)

    @contextmanager
    def _own_writes(self):
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    # ---- watching the prompt markups ---------------------------------------------------------

    def _watch_scene(self):
        scene = slicer.mrmlScene
        self.addObserver(scene, scene.NodeAddedEvent, self._on_node_added)
        self.addObserver(scene, scene.NodeAboutToBeRemovedEvent, self._on_node_removing)
        self.addObserver(scene, scene.NodeRemovedEvent, self._on_node_removed)
        self.addObserver(scene, scene.EndImportEvent, self._on_scene_imported)
        self.addObserver(scene, scene.StartCloseEvent, self._on_scene_closing)
        self.watch_prompts()

    def watch_prompts(self) -> None:
        """Observe every prompt markup in the scene (made here, or restored by a scene load)."""
        for node in slicer.util.getNodesByClass("vtkMRMLMarkupsNode"):
            self._watch(node)

    def _watch(self, node):
        if node.GetAttribute(ROLE) not in ROLES or self.hasObserver(node, PROMPT_MARKUP_EVENTS[0], self._on_moved):
            return
        for event in PROMPT_MARKUP_EVENTS:
            self.addObserver(node, event, self._on_moved)
        self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointStartInteractionEvent, self._on_drag_start)
        self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent, self._on_drag_end)

    def _unwatch(self, node):
        for event in PROMPT_MARKUP_EVENTS:
            self.removeObserver(node, event, self._on_moved)
        self.removeObserver(node, slicer.vtkMRMLMarkupsNode.PointStartInteractionEvent, self._on_drag_start)
        self.removeObserver(node, slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent, self._on_drag_end)
        self._dragged.discard(node.GetID())

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _on_node_added(self, caller, event, node):
        if not slicer.mrmlScene.IsImporting():  # a scene load is watched once it has ended
            self._watch(node)

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _on_node_removing(self, caller, event, node):
        if node.GetAttribute(ROLE) in ROLES and not slicer.mrmlScene.IsClosing():
            self._unwatch(node)
            self._moved(node)

    def _on_node_removed(self, caller=None, event=None):
        if self._moved_prompts and not slicer.mrmlScene.IsClosing():
            self.apply_moved_prompts()  # a deleted box or point list: its slices are segmented again

    def _on_scene_imported(self, caller=None, event=None):
        self.watch_prompts()

    def _on_scene_closing(self, caller=None, event=None):
        for node in slicer.util.getNodesByClass("vtkMRMLMarkupsNode"):
            self._unwatch(node)
        self._moved_prompts.clear()

    def _on_drag_start(self, caller=None, event=None):
        self._dragged.add(caller.GetID())

    def _on_drag_end(self, caller=None, event=None):
        self._dragged.discard(caller.GetID())
        self._moved(caller)
        self.apply_moved_prompts()

    def _on_moved(self, caller=None, event=None):
        """A markup changed outside a drag (a script, the Markups module's table): applied once
        it has settled. During a drag, its end applies it."""
        if self._quiet or caller.GetID() in self._dragged:
            return
        self._moved(caller)
        if self.settle is not None:
            self.settle(self.apply_moved_prompts)

    def _moved(self, node):
        """Remember which volume and segmentation a changed prompt is for."""
        volume, segmentation = node.GetNodeReference(VOLUME_REFERENCE), node.GetNodeReference(SEGMENTATION_REFERENCE)
        if volume is not None and segmentation is not None:
            self._moved_prompts.add((volume, segmentation))

    def apply_moved_prompts(self) -> Optional[dict]:
        """Segment again the slices whose prompts moved or went (also prompts a scene load
        restored, for a volume not segmented yet in this session); during a run, when it ends.
        The undo state is the active editor's. Returns what was written, or None."""
        if self.running:
            self._moved_during_run = True
            return None
        pending, self._moved_prompts = self._moved_prompts, set()
        written = None
        for volume, segmentation in pending:
            if not self.logic.model_ready():
                self._moved_prompts |= pending
                self.load_model(self.apply_moved_prompts)
                return None
            with self.reporting("Updating the segment after moving prompts"), self._own_writes():
                self.logic.segmenter_for(volume, segmentation)
                written = self.logic.apply_moved_prompts(before_write=self._editor_undo())
                if written is not None:
                    self.notify(f"Prompt moved. {self.logic.prompt_message(written)}")
        return written

    # ---- propagation -----------------------------------------------------------------------

    def propagate(self, volume, segmentation, segment_ids, slice_node, options=PropagationOptions(), before_write=None):
        """Start a run of the segments along the axis `slice_node` cuts, as `options` say;
        `before_write` (default: the active editor's undo) runs before its first write."""
        if self.installing:
            self.notify(messages.INSTALLING)
            return None
        if slice_node is None:
            self.notify(messages.CLICK_FIRST)
            return None
        if not self.logic.model_ready():
            self.load_model(lambda: self.propagate(volume, segmentation, segment_ids, slice_node, options,
                                                   before_write))
            return None
        with self.reporting("Propagation"):
            self.run = self.logic.propagate(volume, segmentation, segment_ids, slice_node, options,
                                            before_write or self._editor_undo(),
                                            on_progress=self._on_progress, on_end=self._on_propagated)
            self._polling()
            self.notify(messages.PROPAGATING, self.run.progress())
            return self.run
        return None

    def cancel(self) -> None:
        if self.running:
            self.run.cancel()
            self.notify(messages.CANCELLING)

    def _on_progress(self, job, progress):
        if not job.cancelled:
            self.notify(messages.propagating(progress), progress)

    def _on_propagated(self, job):
        if job.error is not None and not job.cancelled:
            self.report(f"Propagation (stopped after {job.progress().done} slice(s))", job.error)
        else:
            self.notify(messages.propagated(job), job.progress())
        if self._moved_during_run:
            self._moved_during_run = False
            self.apply_moved_prompts()

    # ---- confidence per slice -----------------------------------------------------------------

    def confidences(self, volume, segmentation, segment_id, slice_node):
        """(slice -> the segment's confidence, slice count) along the axis `slice_node` cuts;
        ({}, 0) without a view, for an oblique one, or before a segmenter serves this volume and
        segmentation."""
        segmenter = self.logic.serving(volume, segmentation)
        if segmenter is None or slice_node is None:
            return {}, 0
        try:
            axis = segmenter.axis_of_view(slice_node)
        except InputError:  # an oblique view cuts no slices (the listeners drawing a strip must not fail)
            return {}, 0
        return segmenter.confidences(segment_id, axis), segmenter.volume.num_slices(axis)

    def show_least_confident(self, volume, segmentation, segment_id, slice_node) -> Optional[int]:
        """Move `slice_node` to the segment's least confident slice and say so; None before any result."""
        confidences, _ = self.confidences(volume, segmentation, segment_id, slice_node)
        index = least_confident(confidences)
        if index is None:
            self.notify(messages.NO_RESULT)
            return None
        segmenter = self.logic.segmenter
        segmenter.show_slice(slice_node, index)
        self.notify(messages.LEAST_CONFIDENT.format(axis="ijk"[segmenter.axis_of_view(slice_node)], index=index,
                                                    confidence=confidences[index]))
        return index

    # ---- the editor the user is in, undo -----------------------------------------------------

    def editor_activated(self, before_write) -> None:
        """The SAMed-2 effect of an editor became active: moved prompts save their undo state in
        that editor's history (the one whose Undo the user sees)."""
        self.before_write = before_write

    def editor_deactivated(self, before_write) -> None:
        if self.before_write == before_write:
            self.before_write = None

    def _editor_undo(self) -> Optional[Callable]:
        """The active editor's undo, for a write. An editor deleted with the effect active (Slicer
        5.6 and 5.8 call neither deactivate() nor cleanup() then) raises: it is forgotten and the
        write goes on, as with no editor."""
        before_write = self.before_write
        if before_write is None:
            return None

        def save():
            try:
                before_write()
            except Exception:
                log.exception("the editor's undo state could not be saved (the editor is gone?); it is forgotten")
                self.editor_deactivated(before_write)
        return save

    def undo(self, undo=None) -> Optional[bool]:
        """Undo the last step with `undo()` (an editor's), else with the segmenter's own history;
        refused during a run. Whether something was undone (None when refused)."""
        if self.running:
            self.notify(messages.UNDO_DURING_RUN)
            return None
        if undo is None:
            segmenter = self.logic.segmenter
            undone = segmenter is not None and segmenter.undo()
        else:
            undone = undo()
        self.notify("Undone." if undone else "Nothing to undo.")
        return undone

    def close(self) -> None:
        """The front end goes: stop observing (the Logic stays the module's)."""
        self.removeObservers()
        self.listeners.clear()
