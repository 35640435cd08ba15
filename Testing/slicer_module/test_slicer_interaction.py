"""The interaction layer both front ends drive (SAMed2SlicerLib.interaction), on slicer-core with
the golden tiny SAMed-2: the install guard, job polling that survives a failing handler, the model
loaded in the background before the first prompt, prompt moves (dragged, changed by a script,
deferred during a run, restored by a scene load, deleted), undo in the editor the user is in and
refused during a run, the least confident slice, and the messages a Slicer user reads."""
import numpy as np
import pytest
import slicer
from safetensors.torch import save_file

from samed2.choices import PropagationOptions
from samed2.errors import WeightsError
from samed2.weights import import_checkpoint
from SAMed2SlicerLib import messages
from SAMed2SlicerLib import prompts as markups
from SAMed2SlicerLib.install import InstallPlan
from SAMed2SlicerLib.interaction import Interaction, start_tool
from SAMed2SlicerLib.jobs import BackgroundJob, JobPoller
from SAMed2SlicerLib.logic import LOAD_JOB, SAMed2Logic
from SAMed2SlicerLib.messages import gui_text

from ct_scene import CLICK, labelmaps, world_point
from slicer_harness import load_scene, save_scene
from suite import golden_tiny_model

MarkupsNode = slicer.vtkMRMLMarkupsNode


class Front:
    """What a front end hands the layer: its status line and its error display, recorded."""

    def __init__(self):
        self.status, self.errors, self.undo_saved = [], [], []

    def show(self, message, progress=None):
        self.status.append(message)

    def error(self, text, error=None):
        self.errors.append(text)

    def save_state_for_undo(self):  # the undo hook an editor hands over as before_write
        self.undo_saved.append(len(self.status))


@pytest.fixture
def front():
    return Front()


@pytest.fixture
def logic(mrml_scene, model, tmp_path):
    with_logic = SAMed2Logic(cache_dir=tmp_path / "weights")
    with_logic.use_model("tiny-test", model)
    with_logic.configure(device="cpu")
    yield with_logic
    with_logic.close()


@pytest.fixture
def layer(logic, front):
    with_layer = Interaction(logic, show_error=front.error)
    with_layer.listeners.append(front.show)
    yield with_layer
    with_layer.close()


def tick_until_idle(layer, timeout_ticks=20000):
    for _ in range(timeout_ticks):
        if not layer.tick():
            return
    raise AssertionError("the jobs never ended")


def drag(node, to_world):
    """What Markups does for a drag in a view: start, moves, end (vtkSlicerMarkupsWidget)."""
    node.InvokeCustomModifiedEvent(MarkupsNode.PointStartInteractionEvent)
    node.SetNthControlPointPositionWorld(0, *to_world)
    node.InvokeCustomModifiedEvent(MarkupsNode.PointEndInteractionEvent)


# ---- defect 2: one installation at a time ---------------------------------------------------------


def test_slicer_a_second_prompt_during_the_install_starts_nothing(logic, layer, front, views, ct, abdomen):
    missing = InstallPlan.for_this_python(requirements=["samed2-package-that-is-not-there>=1"])
    assert missing.needed
    installed = []
    logic.install_plan = lambda dicom=False: InstallPlan(torch=False) if installed else missing

    def install(plan):  # pip's output pumps the event loop: the user clicks, presses Propagate meanwhile
        assert layer.ensure_ready(install) is False
        layer.click(ct, abdomen, "liver", views["Red"], world_point(CLICK))
        layer.propagate(ct, abdomen, ["liver"], views["Red"], PropagationOptions())
        installed.append(plan)
        return True

    before = labelmaps(abdomen, ct)
    assert layer.ensure_ready(install) is True
    assert len(installed) == 1
    assert front.status.count(messages.INSTALLING) == 3
    assert layer.run is None and not logic.jobs.jobs and not markups.prompt_nodes(abdomen)
    for segment_id, voxels in labelmaps(abdomen, ct).items():
        np.testing.assert_array_equal(voxels, before[segment_id])
    assert layer.ensure_ready(install) is True and len(installed) == 1, "nothing left to install"


def test_slicer_a_refused_install_says_so(logic, layer, front):
    logic.install_plan = lambda dicom=False: InstallPlan.for_this_python(requirements=["samed2-not-there>=1"])
    assert layer.ensure_ready(lambda plan: False) is False
    assert front.status[-1] == messages.NOT_INSTALLED and not layer.installing


# ---- defect 9: a failing handler never stops the polling ------------------------------------------


def counting_job(name, count=50):
    def work(job):
        for index in range(count):
            job.advance(index + 1, count)
            job.emit(index)
        return count

    return BackgroundJob(name, work, take=lambda batch: None).start()


def test_slicer_a_failing_handler_is_reported_once_and_every_job_still_ends():
    reported, ended = [], []
    poller = JobPoller()
    poller.on_error = lambda job, error: reported.append((job.name, str(error)))

    def broken_progress(job, progress):
        raise RuntimeError("the panel's widgets are gone")

    def broken_end(job):
        raise RuntimeError("the end handler failed too")

    first = poller.add(counting_job("first"), on_progress=broken_progress, on_end=ended.append)
    second = poller.add(counting_job("second"), on_end=broken_end)
    third = poller.add(counting_job("third"), on_end=ended.append)
    while poller.tick():
        pass
    assert ended == [first, third] or ended == [third, first]
    assert reported.count(("first", "the panel's widgets are gone")) <= 1
    assert ("second", "the end handler failed too") in reported
    assert not poller.jobs and second.finished


def test_mrml_a_failing_listener_is_dropped_and_the_run_still_ends(layer, front, ct, abdomen, views):
    def gone(message, progress=None):
        raise RuntimeError("wrapped C/C++ object has been deleted")

    layer.listeners.insert(0, gone)
    layer.click(ct, abdomen, "liver", views["Red"], world_point(CLICK))
    run = layer.propagate(ct, abdomen, ["liver"], views["Red"], PropagationOptions("up", stop=18))
    tick_until_idle(layer)
    assert run.finished and run.error is None and not layer.running
    assert gone not in layer.listeners
    assert front.status[-1].startswith("Propagation done: 3 slice(s)")


# ---- item 5 / defect 3: the model loads in the background -----------------------------------------


@pytest.fixture
def cached_logic(mrml_scene, model, tmp_path):
    """A Logic whose model is in its weights cache, not loaded yet (as after Slicer starts)."""
    from suite import golden_tiny_config

    weights = tmp_path / "tiny.safetensors"
    save_file(model.state_dict(), str(weights))
    import_checkpoint(weights, name="tiny-cached", config=golden_tiny_config(), cache_dir=tmp_path / "weights")
    with_logic = SAMed2Logic(cache_dir=tmp_path / "weights")
    with_logic.configure(model="tiny-cached", device="cpu")
    yield with_logic
    with_logic.close()


def test_mrml_first_click_loads_the_model_in_the_background_then_segments(cached_logic, front, ct, abdomen, views):
    polled = []  # the front end's timer is started for each job the layer starts
    layer = Interaction(cached_logic, show_error=front.error, poll=lambda: polled.append(
        [job.name for job in cached_logic.jobs.jobs]))
    layer.listeners.append(front.show)
    before = labelmaps(abdomen, ct)["liver"]
    layer.click(ct, abdomen, "liver", views["Red"], world_point(CLICK))
    assert front.status == [messages.LOADING.format(model="tiny-cached")]
    assert [job.name for job in cached_logic.jobs.jobs] == [LOAD_JOB], "the click returned before loading"
    assert polled == [[LOAD_JOB]]
    np.testing.assert_array_equal(labelmaps(abdomen, ct)["liver"], before)
    layer.click(ct, abdomen, "liver", views["Red"], world_point(CLICK))  # a second click while it loads
    assert len(cached_logic.jobs.jobs) == 1, "one load"
    tick_until_idle(layer)
    assert polled[1:] == [["warm-up"]], "the clicked slices were encoded in the background"
    assert cached_logic.model_ready() and not front.errors
    assert front.status[-1].startswith(f"Segmented slice k = {CLICK[2]}")
    assert labelmaps(abdomen, ct)["liver"][CLICK[2]].any()
    layer.close()


def test_mrml_a_loaded_model_reaches_the_model_listeners_with_its_start_tool(mrml_scene, lite_file, tmp_path, front):
    """MedSAM-Lite (trained on boxes only) loaded from the cache: the front ends hear the model, and
    its start tool is Box; the golden tiny model (points and boxes) starts with Include."""
    import_checkpoint(lite_file, cache_dir=tmp_path / "weights")
    logic = SAMed2Logic(cache_dir=tmp_path / "weights")
    logic.configure(model="medsam-lite", device="cpu")
    layer, heard = Interaction(logic, show_error=front.error), []
    layer.model_listeners.append(heard.append)
    layer.preload()
    tick_until_idle(layer)
    assert heard == [logic.engine_model()] and not front.errors
    assert start_tool(heard[0]) == markups.BOX
    assert start_tool(golden_tiny_model()) == markups.INCLUDE
    layer.close()
    logic.close()


def test_mrml_opening_the_editor_loads_a_cached_model_and_nothing_else(cached_logic, front):
    layer = Interaction(cached_logic, show_error=front.error)
    cached_logic.configure(model="sam2.1-hiera-tiny")  # not downloaded: nothing starts, nothing is said
    layer.preload()
    assert not cached_logic.jobs.jobs and not front.errors
    cached_logic.configure(model="tiny-cached")
    layer.preload()
    assert [job.name for job in cached_logic.jobs.jobs] == [LOAD_JOB]
    tick_until_idle(layer)
    assert cached_logic.model_ready() and not front.errors
    layer.close()


def test_mrml_a_model_that_fails_to_load_is_reported_with_the_modules_buttons(cached_logic, front, tmp_path):
    layer = Interaction(cached_logic, show_error=front.error)
    cached_logic.configure(model="sam2.1-hiera-tiny")  # known, not downloaded
    failed = []
    layer.load_model(failed=lambda: failed.append(True))
    tick_until_idle(layer)
    assert failed == [True] and len(front.errors) == 1
    assert "click Download in the SAMed-2 module" in front.errors[0]
    assert "samed2 weights" not in front.errors[0]
    layer.close()


# ---- defect 13: prompts watched, moves applied, undo in the user's editor ---------------------------


def test_mrml_a_drag_applies_once_at_its_end_with_the_active_editors_undo(layer, front, ct, abdomen, views):
    layer.click(ct, abdomen, "liver", views["Red"], world_point(CLICK), before_write=front.save_state_for_undo)
    assert len(front.undo_saved) == 1
    other_editor = Front()
    layer.editor_activated(other_editor.save_state_for_undo)  # the user went to the other editor
    node = markups.prompt_nodes(abdomen, "liver", markups.INCLUDE)[0]
    before = labelmaps(abdomen, ct)["liver"]
    node.InvokeCustomModifiedEvent(MarkupsNode.PointStartInteractionEvent)
    node.SetNthControlPointPositionWorld(0, *world_point((50, 45, CLICK[2])))  # mid-drag: nothing runs
    np.testing.assert_array_equal(labelmaps(abdomen, ct)["liver"], before)
    node.InvokeCustomModifiedEvent(MarkupsNode.PointEndInteractionEvent)
    assert front.status[-1].startswith(f"Prompt moved. Segmented slice k = {CLICK[2]}")
    assert len(other_editor.undo_saved) == 1 and len(front.undo_saved) == 1


def test_mrml_a_drag_after_the_active_editor_was_deleted_still_applies(layer, front, ct, abdomen, views):
    """Slicer 5.6 and 5.8 delete an editor with SAMed-2 active without deactivate() or cleanup():
    its undo, still the active one, raises as PythonQt does for a deleted object. The move is
    applied anyway, and that editor is not asked again."""
    layer.click(ct, abdomen, "liver", views["Red"], world_point(CLICK))
    asked = []

    def deleted_editors_undo():
        asked.append(True)
        raise AttributeError("Trying to read attribute 'saveStateForUndo' from a destroyed object")

    layer.editor_activated(deleted_editors_undo)
    node = markups.prompt_nodes(abdomen, "liver", markups.INCLUDE)[0]
    for x in (50, 52):
        before = labelmaps(abdomen, ct)["liver"]
        drag(node, world_point((x, 45, CLICK[2])))
        assert front.status[-1].startswith(f"Prompt moved. Segmented slice k = {CLICK[2]}"), front.errors
        assert not np.array_equal(labelmaps(abdomen, ct)["liver"], before)
    assert asked == [True] and not front.errors


def test_mrml_a_script_moving_a_prompt_is_applied_once_settled(logic, front, ct, abdomen, views):
    settled = []
    layer = Interaction(logic, settle=settled.append)
    layer.listeners.append(front.show)
    layer.click(ct, abdomen, "liver", views["Red"], world_point(CLICK))
    assert not settled, "our own prompt writes are not moves"
    node = markups.prompt_nodes(abdomen, "liver", markups.INCLUDE)[0]
    node.SetNthControlPointPositionWorld(0, *world_point((50, 45, CLICK[2] + 2)))
    assert settled, "the front end's settle timer was started"
    settled[-1]()
    assert front.status[-1].startswith("Prompt moved. Segmented slice k = ")
    layer.close()


def test_mrml_moves_during_a_run_are_applied_when_it_ends(layer, front, ct, abdomen, views):
    layer.click(ct, abdomen, "liver", views["Red"], world_point(CLICK))
    run = layer.propagate(ct, abdomen, ["liver"], views["Red"], PropagationOptions("up", stop=CLICK[2] + 2))
    assert layer.running
    drag(markups.prompt_nodes(abdomen, "liver", markups.INCLUDE)[0], world_point((50, 45, CLICK[2])))
    assert layer.undo() is None and front.status[-1] == messages.UNDO_DURING_RUN
    tick_until_idle(layer)
    assert run.finished
    assert front.status[-2].startswith("Propagation done") and front.status[-1].startswith("Prompt moved.")


def test_mrml_deleting_a_box_clears_its_slice(layer, front, ct, abdomen, views):
    k = CLICK[2] + 1
    layer.box(ct, abdomen, "liver", views["Red"], world_point((40, 30, k)), world_point((90, 80, k)))
    assert labelmaps(abdomen, ct)["liver"][k].any()
    slicer.mrmlScene.RemoveNode(markups.prompt_nodes(abdomen, "liver", markups.BOX)[0])
    assert not labelmaps(abdomen, ct)["liver"][k].any()
    assert front.status[-1].startswith(f"Prompt moved. Segmented slice k = {k}")


def test_mrml_prompts_restored_by_a_scene_load_are_watched(logic, front, ct, abdomen, views, tmp_path):
    logic.click(ct, abdomen, "liver", views["Red"], world_point(CLICK))
    logic.close_segmenter()
    save_scene(tmp_path / "session.mrb")
    slicer.mrmlScene.Clear(0)
    layer = Interaction(logic, show_error=front.error)  # a front end started before the load
    layer.listeners.append(front.show)
    load_scene(tmp_path / "session.mrb")
    segmentation, volume = slicer.util.getNode("segmentation"), slicer.util.getNode("ct")
    node = markups.prompt_nodes(segmentation, "liver", markups.INCLUDE)[0]
    before = labelmaps(segmentation, volume)["liver"]
    drag(node, node.GetNthControlPointPositionWorld(0) + np.array([-8.0, -6.0, 0.0]))
    assert logic.segmenter is not None and logic.segmenter.segmentation_node is segmentation
    changed = np.flatnonzero((labelmaps(segmentation, volume)["liver"] != before).any(axis=(1, 2)))
    assert len(changed) == 1 and front.status[-1].startswith("Prompt moved.")
    layer.close()


# ---- defect 15: messages for Slicer users, slice numbers without a model ---------------------------


def test_slicer_engine_messages_name_the_modules_buttons_not_commands():
    missing = WeightsError("the samed2 weights are not in the cache /c. Download them with `samed2 weights download "
                           "samed2`; offline, fetch samed2.pth from https://x on another machine and run "
                           "`samed2 weights import /path/to/samed2.pth`")
    text = gui_text(str(missing))
    assert "`samed2" not in text
    assert "click Download in the SAMed-2 module" in text and "click Import from file in the SAMed-2 module" in text
    gone = gui_text("my-model was imported but /c/x.pt is gone: import it again with `samed2 weights import FILE "
                    "--name my-model`")
    assert gone == "my-model was imported but /c/x.pt is gone: click Import from file in the SAMed-2 module"


def test_mrml_current_slice_comes_from_the_geometry_without_a_model(mrml_scene, ct, abdomen, views, tmp_path):
    logic = SAMed2Logic(cache_dir=tmp_path / "empty")  # no model anywhere
    assert logic.view_slice_index(ct, views["Red"]) == CLICK[2]
    assert not logic.model_ready() and logic.segmenter is None
    logic.close()


# ---- issue 21: the confidence per slice and the least confident slice -----------------------------


def test_mrml_least_confident_slice_is_shown_in_the_view_and_said(layer, logic, front, ct, abdomen, views):
    red = views["Red"]
    assert layer.confidences(ct, abdomen, "liver", red) == ({}, 0), "no segmenter yet"
    assert layer.show_least_confident(ct, abdomen, "liver", red) is None
    assert front.status[-1] == messages.NO_RESULT
    layer.click(ct, abdomen, "liver", red, world_point(CLICK))
    layer.propagate(ct, abdomen, ["liver"], red, PropagationOptions("up", stop=CLICK[2] + 3))
    tick_until_idle(layer)
    confidences, num_slices = layer.confidences(ct, abdomen, "liver", red)
    assert sorted(confidences) == list(range(CLICK[2], CLICK[2] + 4)), "the clicked slice and three propagated"
    assert num_slices == slicer.util.arrayFromVolume(ct).shape[0]
    assert layer.confidences(ct, abdomen, "liver", None) == ({}, 0)
    least = min(confidences, key=confidences.get)
    logic.segmenter.show_slice(red, 3)
    assert layer.show_least_confident(ct, abdomen, "liver", red) == least
    assert logic.view_slice_index(ct, red) == least
    assert front.status[-1] == f"Least confident slice: k = {least} (confidence {confidences[least]:.2f})."
    assert layer.show_least_confident(ct, abdomen, "spleen", red) is None and front.status[-1] == messages.NO_RESULT


# ---- defects 10 and 12: box centres and the Markups toolbar's list ----------------------------------


def test_mrml_a_press_on_a_box_centre_is_a_point_and_on_its_outline_a_drag(logic, ct, abdomen, views):
    k = CLICK[2]
    logic.box(ct, abdomen, "liver", views["Red"], world_point((40, 30, k)), world_point((90, 80, k)))
    box = markups.prompt_nodes(abdomen, "liver", markups.BOX)[0]
    display = box.GetDisplayNode()
    components = slicer.vtkMRMLMarkupsDisplayNode
    for component, index in ((components.ComponentControlPoint, 0), (components.ComponentTranslationHandle, 3)):
        display.SetActiveComponent(component, index)
        assert markups.hovered_prompt(abdomen) is None, "at the centre the press makes a point prompt"
    for component, index in ((slicer.vtkMRMLMarkupsROIDisplayNode.ComponentROI, 0),
                             (components.ComponentScaleHandle, 2), (components.ComponentTranslationHandle, 0)):
        display.SetActiveComponent(component, index)
        assert markups.hovered_prompt(abdomen) is box, "the outline and handles: Markups drags or resizes the box"
    display.SetActiveComponent(components.ComponentNone, -1)
    logic.click(ct, abdomen, "liver", views["Red"], world_point(CLICK))
    points = markups.prompt_nodes(abdomen, "liver", markups.INCLUDE)[0]
    points.GetDisplayNode().SetActiveComponent(components.ComponentControlPoint, 0)
    assert markups.hovered_prompt(abdomen) is points, "a point prompt is dragged by its point"


def test_mrml_prompts_leave_the_markups_toolbars_list_alone(logic, ct, abdomen, views):
    selection = slicer.mrmlScene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
    mine = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "my points")
    selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
    selection.SetReferenceActivePlaceNodeID(mine.GetID())
    logic.click(ct, abdomen, "liver", views["Red"], world_point(CLICK))
    logic.box(ct, abdomen, "liver", views["Red"], world_point((40, 30, 16)), world_point((90, 80, 16)))
    assert markups.prompt_nodes(abdomen), "the prompts were made"
    assert selection.GetActivePlaceNodeID() == mine.GetID()
    assert selection.GetActivePlaceNodeClassName() == "vtkMRMLMarkupsFiducialNode"
