"""The module panel in each supported Slicer release, where the releases differ (see
slicer_releases.py for what each stand-in imitates and where in Slicer's source it is): set-up,
entering, leaving and re-entering the module, the parameter node's binding to the panel, scene
import while the panel is hidden, late headless loading, the installer each release offers,
the pydicom each release bundles, and the Segment Editor effect's life cycle in an editor of each
release."""
import importlib
import logging
import shutil
import sys
import threading
import types
from pathlib import Path

import pytest
import slicer

import slicer_releases
from slicer_releases import RELEASES, QComboBox, SegmentEditorWidget
from suite import golden_tiny_model

CHOSEN = {"device": "cpu", "preset": "lung", "precision": "fp32", "backend": "torch", "exportFormat": "NIfTI file"}
RELOADED = ("SAMed2Slicer", "SAMed2SlicerQt", "SAMed2SlicerQt.controller", "SegmentEditorSAMed2Lib",
            "SegmentEditorSAMed2Lib.SegmentEditorEffect")


def forget_module_nodes(scene):
    """Remove the module's singleton nodes with every observer on them: connections that the
    imitated 5.6-5.10 wrapper never removes must not outlive the test that made them."""
    for tag, kind in (("SAMed2Slicer", "vtkMRMLScriptedModuleNode"), ("SAMed2", "vtkMRMLSegmentEditorNode")):
        node = scene.GetSingletonNode(tag, kind)
        if node is not None:
            node.RemoveAllObservers()
            scene.RemoveNode(node)
    scene.Clear(0)


@pytest.fixture(params=RELEASES)
def release(request, monkeypatch, slicer_app):
    forget_module_nodes(slicer_app.scene)
    slicer_releases.install(request.param, monkeypatch, slicer_app)
    for name in RELOADED:  # imported again under this release's qt and slicer modules
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield request.param
    forget_module_nodes(slicer_app.scene)


@pytest.fixture
def module(release):
    return importlib.import_module("SAMed2Slicer")


def make_panel(module, monkeypatch):
    """The module's widget after setup(); slicer.util.getModuleLogic returns its Logic, as in
    Slicer (through the module's widget representation)."""
    widget = module.SAMed2SlicerWidget(slicer_releases.ModuleParent())
    monkeypatch.setattr(slicer.util, "getModuleLogic", lambda name: widget.logic, raising=False)
    widget.setup()
    return widget


@pytest.fixture
def panel(module, monkeypatch):
    widget = make_panel(module, monkeypatch)
    yield widget
    widget.cleanup()


def enter(widget):
    widget.parent.isEntered = True  # qSlicerAbstractModuleWidget::enter, before Python's enter()
    widget.enter()


def leave(widget):
    widget.parent.isEntered = False
    widget.exit()


def bound_widgets(widget):
    """{parameter name: widget} for the widgets the .ui binds with SlicerParameterName."""
    return {w.property("SlicerParameterName"): w for w in vars(widget.ui).values() if w.property("SlicerParameterName")}


def settings(widget):
    node = widget.logic.getParameterNode()
    return {name: getattr(node, name) for name in CHOSEN}


def test_slicer_settings_chosen_in_the_panel_survive_leaving_and_reentering(panel, release):
    """Slicer 5.6 and 5.8 (connectGui returns None): a connection left over from an earlier
    connectGui wrote the first choice back when the combo boxes were refilled."""
    enter(panel)
    combos = bound_widgets(panel)
    for name, value in CHOSEN.items():
        combos[name].currentText = value
    assert settings(panel) == CHOSEN
    for _ in range(2):
        leave(panel)
        enter(panel)
    assert settings(panel) == CHOSEN, f"Slicer {release}: the settings went back to their first choices"
    assert {name: combos[name].currentText for name in CHOSEN} == CHOSEN
    assert {k: getattr(panel.logic.settings, k) for k in ("device", "preset", "precision")} == {
        k: CHOSEN[k] for k in ("device", "preset", "precision")}


def test_slicer_settings_loaded_with_a_scene_survive_opening_the_module(module, release, monkeypatch):
    """A scene's saved settings are in the parameter node before the panel exists."""
    node = module.SAMed2SlicerLogic().getParameterNode()
    for name, value in CHOSEN.items():
        setattr(node, name, value)
    widget = make_panel(module, monkeypatch)
    enter(widget)
    assert settings(widget) == CHOSEN, f"Slicer {release}: opening the module overwrote the scene's settings"
    widget.cleanup()


def test_slicer_panel_connections_do_not_pile_up(panel, release):
    for _ in range(3):
        enter(panel)
        leave(panel)
    combos = {name: w for name, w in bound_widgets(panel).items() if isinstance(w, QComboBox)}
    assert set(combos) == {"device", "preset", "precision", "backend", "exportFormat"}
    for name, widget in combos.items():
        assert len(widget.currentIndexChanged.slots) == 1, f"Slicer {release}: {name} has stacked connections"


def test_slicer_panel_follows_a_new_scene(panel, release):
    """Scene close makes a new parameter node: the panel binds to it and shows its defaults."""
    enter(panel)
    bound_widgets(panel)["device"].currentText = "cpu"
    slicer.mrmlScene.Clear(0)
    assert panel.logic.getParameterNode().device == "auto"
    assert bound_widgets(panel)["device"].currentText == "auto"
    bound_widgets(panel)["device"].currentText = "cpu"
    assert panel.logic.getParameterNode().device == "cpu" and panel.logic.settings.device == "cpu"


def test_slicer_hidden_panel_survives_a_scene_close(panel):
    """A download ending after a scene close, with another module shown, updates the panel."""
    enter(panel)
    leave(panel)
    slicer.mrmlScene.Clear(0)
    panel.updateWeightsStatus()
    panel.onModelChanged("medsam-lite")  # no parameter node while hidden: nothing to write into
    enter(panel)
    assert panel.logic.getParameterNode().model == "", "the new scene's node keeps its default (the best cached)"


def test_slicer_empty_path_fields_are_empty_and_bound_both_ways(panel, release):
    """An unset Path() used to show as "." in the output file and DICOM folder fields."""
    enter(panel)
    fields = {"exportPath": panel.ui.exportPathLineEdit, "dicomFolder": panel.ui.dicomFolderPathLineEdit}
    assert {name: field.currentPath for name, field in fields.items()} == {"exportPath": "", "dicomFolder": ""}
    node = panel.logic.getParameterNode()
    fields["exportPath"].currentPath = "/tmp/out.nii.gz"
    assert node.exportPath == "/tmp/out.nii.gz"
    node.dicomFolder = "/data/ct"  # as a loaded scene sets it
    assert fields["dicomFolder"].currentPath == "/data/ct"


def import_scene(editor):
    """A scene import whose editor node says SAMed-2 is active: qMRMLSegmentEditorWidget skips
    updates during batch processing and applies the node's active effect on EndBatchProcessEvent,
    which vtkMRMLScene::EndState emits after EndImportEvent; then the event loop turns."""
    slicer.mrmlScene.StartState(slicer.vtkMRMLScene.ImportState)
    slicer.mrmlScene.EndState(slicer.vtkMRMLScene.ImportState)
    editor.setActiveEffectByName("SAMed-2")
    for callback in slicer_releases.QTimer.posted:
        callback()


def test_slicer_hidden_panel_never_switches_the_effect_on(panel, release):
    """A scene import restores the editor node's active effect, and its source volume change
    reaches the panel while another module is shown: neither may leave SAMed-2 observing the views."""
    enter(panel)
    leave(panel)
    editor = panel.ui.segmentEditorWidget
    panel.onSourceVolumeChanged(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode"))
    assert not editor.observingViews and editor.activeEffectName == ""
    import_scene(editor)
    assert not editor.observingViews, "the hidden panel's editor still intercepts clicks in the slice views"


def test_slicer_shown_panel_keeps_the_effect_after_a_scene_import(panel, release):
    enter(panel)
    editor = panel.ui.segmentEditorWidget
    import_scene(editor)
    assert editor.observingViews and editor.activeEffectName == "SAMed-2"


def test_slicer_module_status_line_is_the_panels_own(panel):
    panel.showStatus("Propagated 3 slices")
    assert panel.ui.moduleStatusLabel.text == "Propagated 3 slices"
    assert isinstance(panel.ui.segmentEditorWidget, SegmentEditorWidget)


def test_slicer_late_headless_loading_registers_the_effect(module, monkeypatch):
    """Without a main window Slicer emits startupCompleted() once, from a 0 ms timer: a module
    loaded after it (slicer.util.loadModule from a script) must not wait for it."""
    registered = []
    monkeypatch.setattr(module, "registerEffect", lambda: registered.append(True))
    module.SAMed2Slicer(types.SimpleNamespace())
    for callback in slicer_releases.QTimer.posted:  # the event loop turns
        callback()
    assert registered, "the effect is never registered"


def test_slicer_installer_is_what_each_release_offers(release):
    from SAMed2SlicerLib.install import install_function

    _, name = install_function(slicer)
    assert name == ("slicer.packaging.pip_ensure" if release == "5.12" else "slicer.util.pip_install")


@pytest.fixture
def bundled_pydicom(release, monkeypatch):
    """The pydicom the release bundles, imported at start-up (its DICOM plugins import it)."""
    pydicom = types.ModuleType("pydicom")
    pydicom.__version__ = slicer_releases.BUNDLED_PYDICOM[release]
    monkeypatch.setitem(sys.modules, "pydicom", pydicom)
    return pydicom.__version__


def test_slicer_dicom_packages_replaced_under_a_running_slicer_are_stale(release, bundled_pydicom):
    from SAMed2SlicerLib.install import DICOM_REQUIREMENTS, stale_modules

    stale = stale_modules(DICOM_REQUIREMENTS)
    assert stale == ([] if release == "5.12" else [f"pydicom {bundled_pydicom}"])


def test_slicer_dicom_seg_export_waits_for_a_restart_after_pydicom_was_replaced(panel, release, bundled_pydicom,
                                                                               monkeypatch):
    """Slicer 5.10: installing pydicom 3 leaves the imported 2.4.4 running; the export must not
    run against it, and the restart is offered."""
    if release != "5.10":
        pytest.skip("5.6 and 5.8 refuse DICOM-SEG (Python 3.9), 5.12 bundles pydicom 3")
    asked, restarted, exported = [], [], []
    monkeypatch.setattr(panel.controller, "ensure_ready", lambda dicom=False: True)  # the install went through
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, **kw: asked.append(text) or True,
                        raising=False)
    monkeypatch.setattr(slicer.util, "restart", lambda: restarted.append(True), raising=False)
    monkeypatch.setattr(panel.logic, "export", lambda *args, **kwargs: exported.append(args) or "")
    enter(panel)
    panel.logic.getParameterNode().exportFormat = "DICOM-SEG file"
    panel.onExport()
    assert not exported and restarted
    assert "pydicom 2.4.4" in asked[0] and "Restart" in asked[0]


@pytest.mark.parametrize("exportFormat, answer, imported", [
    ("DICOM-SEG file", True, True), ("DICOM-SEG file", False, False), ("DICOM-SEG into the DICOM database", None, True),
])
def test_slicer_dicom_seg_export_offers_the_dicom_database(panel, release, monkeypatch, data_dir, tmp_path,
                                                           exportFormat, answer, imported):
    """After a DICOM-SEG export to a file the panel offers to put a copy into the DICOM database (the
    file stays); the database choice puts it there without asking and removes its temporary file."""
    if release != "5.12":
        pytest.skip("DICOM-SEG export runs without a restart from 5.12 (see the pydicom test above)")
    from SAMed2SlicerLib import export

    asked, taken = [], []
    monkeypatch.setattr(panel.controller, "ensure_ready", lambda dicom=False: True)
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay", lambda text, **kw: asked.append(text) or answer,
                        raising=False)
    monkeypatch.setattr(panel.logic, "export", lambda volume, segmentation, kind, path, *rest:
                        shutil.copy(data_dir / "dcmqi" / "liver.dcm", path) and f"Wrote {path}.")
    monkeypatch.setattr(export, "import_into_dicom_database", lambda path, database: taken.append(Path(path)))
    monkeypatch.setattr(slicer, "dicomDatabase", None, raising=False)  # Slicer's, made by the DICOM module
    enter(panel)
    node = panel.logic.getParameterNode()
    node.exportFormat, node.exportPath = exportFormat, str(tmp_path / "liver_seg.dcm")
    panel.onExport()
    assert bool(taken) == imported and len(asked) == (answer is not None)
    if exportFormat == "DICOM-SEG file":
        assert (tmp_path / "liver_seg.dcm").is_file()
        assert ("DICOM database" in panel.ui.exportStatusLabel.text) == imported
    else:
        assert not taken[0].exists(), "the temporary export goes once the database holds its copy"


@pytest.fixture
def segment_editor(module, release, monkeypatch):
    """The Segment Editor module's editor with SAMed-2 active, the effect registered at start-up;
    the SAMed-2 module's panel is never opened. Yields (editor, what built the panel)."""
    built = []
    monkeypatch.setattr(slicer.util, "getModuleLogic", lambda name: built.append(f"getModuleLogic({name})"),
                        raising=False)
    monkeypatch.setattr(module.SAMed2SlicerWidget, "setup", lambda widget: built.append("SAMed2SlicerWidget.setup"))
    module.registerEffect()
    editor = slicer_releases.SegmentEditor(release)
    editor.setActiveEffectByName("SAMed-2")
    yield editor, built
    from SAMed2SlicerQt.controller import Controller

    Controller.get().interaction.close()
    Controller.get().logic.close()


def test_slicer_segment_editor_module_effect_does_not_build_the_panel(segment_editor):
    editor, built = segment_editor
    from SAMed2SlicerQt.controller import Controller

    Controller.get().notify("Loading model samed2")
    assert editor.active.self().ui.statusLabel.text == "Loading model samed2"
    assert built == [], "the effect built the SAMed-2 module's panel"


@pytest.fixture
def go_on():
    """What a test's job waits for; set at the end whatever happened."""
    event = threading.Event()
    yield event
    event.set()


def test_slicer_messages_and_job_polling_go_on_after_an_editor_is_deleted(segment_editor, release, go_on, caplog):
    """An editor deleted with SAMed-2 active (a script's editor, the application closing): from
    5.10 its cleanup() lets go of the effect; 5.6 and 5.8 never call it, and the effect's status
    line, already deleted, fails once and is dropped. Later messages, e.g. a running job's, raise
    nothing, reach the other front ends, and the job is polled to its end."""
    editor, _ = segment_editor
    from SAMed2SlicerLib.jobs import BackgroundJob
    from SAMed2SlicerQt.controller import Controller

    controller, heard = Controller.get(), []
    controller.listeners.append(lambda message, progress: heard.append(message))  # another front end
    effect = editor.active.self()

    def work(job):
        job.advance(1, 2)
        go_on.wait(30)

    job = controller.logic.jobs.add(BackgroundJob("propagation", work).start(),
                                    on_progress=lambda job, progress: controller.notify("Propagating", progress),
                                    on_end=lambda job: controller.notify("Propagated"))
    controller.watch_jobs()
    while "Propagating" not in heard:
        controller._tick()
    assert effect.ui.statusLabel.text == "Propagating"
    editor.delete()
    if slicer_releases.at_least(release, "5.10"):
        assert effect._show not in controller.listeners, f"Slicer {release}: the deleted effect still listens"
        assert controller.interaction.before_write is None, "undo still goes to the deleted editor"
    go_on.set()
    with caplog.at_level(logging.ERROR):
        while controller._job_timer.isActive():
            controller._tick()
    assert job.finished and job.error is None
    assert heard[-1] == "Propagated" and effect._show not in controller.listeners
    undo = controller.interaction._editor_undo()  # what the next write calls first
    if undo is not None:  # 5.6 and 5.8: the deleted editor's, let go once it fails
        undo()
    assert controller.interaction.before_write is None
    failures = [r for r in caplog.records if "listener failed" in r.getMessage()]
    assert len(failures) == (0 if slicer_releases.at_least(release, "5.10") else 1)


@pytest.mark.parametrize("answer, prompts", [("ConfirmedWithoutDialog", 1), ("ConfirmedWithDialog", 0),
                                             ("NotConfirmed", 0)])
def test_slicer_press_on_a_hidden_segment_asks_first_as_paint_and_draw_do(segment_editor, monkeypatch, answer,
                                                                          prompts):
    """A prompt writes into the selected segment: when that segment is hidden, Slicer's
    confirmCurrentSegmentVisible asks first; a cancel, or a press spent on the dialog, makes no prompt."""
    editor, _ = segment_editor
    from SAMed2SlicerQt.controller import Controller

    effect, clicks = editor.active.self(), []
    effect.scriptedEffect.segmentVisibleAnswer = getattr(effect.scriptedEffect, answer)
    nodes = types.SimpleNamespace(GetSourceVolumeNode=lambda: None, GetSegmentationNode=lambda: None,
                                  GetSelectedSegmentID=lambda: "Segment_1")
    monkeypatch.setattr(effect.scriptedEffect, "parameterSetNode", lambda: nodes, raising=False)
    monkeypatch.setattr(effect, "xyToRas", lambda xy, view: (0.0, 0.0, 0.0), raising=False)
    monkeypatch.setattr(effect.scriptedEffect, "parameter", lambda name: "include")
    monkeypatch.setattr(Controller.get(), "click", lambda *args: clicks.append(args))
    interactor = types.SimpleNamespace(GetShiftKey=lambda: 0, GetControlKey=lambda: 0, GetAltKey=lambda: 0)
    view = types.SimpleNamespace(mrmlSliceNode=lambda: "Red")
    assert effect._press(interactor, (10, 10), view) is True
    assert len(clicks) == prompts


def test_slicer_effect_takes_the_box_tool_for_a_box_only_model(segment_editor, lite_model):
    """MedSAM-Lite was trained on boxes only: opening the effect with it loaded selects Box, and
    leaving the effect stops listening for loads; a model that takes points leaves the tool alone."""
    editor, _ = segment_editor
    from SAMed2SlicerQt.controller import Controller

    effect, controller = editor.active.self(), Controller.get()
    effect._set_tool("include")
    editor.setActiveEffectByName(None)
    assert effect._suit_tool_to not in controller.interaction.model_listeners
    controller.logic.use_model("medsam-lite", lite_model)
    editor.setActiveEffectByName("SAMed-2")
    assert effect.scriptedEffect.parameter("Tool") == "box"
    effect._set_tool("include")
    controller.logic.use_model("tiny", golden_tiny_model())
    editor.setActiveEffectByName(None)
    editor.setActiveEffectByName("SAMed-2")
    assert effect.scriptedEffect.parameter("Tool") == "include"


def test_slicer_effect_has_the_confidence_strip_and_its_button(segment_editor):
    """Under the propagation controls: the strip (empty before any result) and "Least confident
    slice", which asks the interaction layer (with nothing segmented yet, it says so)."""
    editor, _ = segment_editor
    from SAMed2SlicerQt.controller import Controller

    effect = editor.active.self()
    effect._prompt_view = "Red"  # the view of a prompt: no layout needed
    Controller.get().notify("Ready")
    assert effect.ui.confidenceStripLabel.text == ""
    assert effect.ui.leastConfidentButton.text == "Least confident slice"
    effect.ui.leastConfidentButton.emit("clicked()")
    assert effect.ui.statusLabel.text.startswith("No slice has a result yet")
    assert effect.ui.confidenceStripLabel.text == ""
