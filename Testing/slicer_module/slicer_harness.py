"""Slicer's MRML logic without the Slicer application, on slicer-core (test-only code).

slicer-core (PyPI) ships Slicer's MRML and module-logic libraries and `slicer.util`, but
not the Qt application whose start-up normally wires them together. `start()` does that
wiring once per process: a scene, the application logic, the module logics
`slicer.util` needs (each given the application logic and the scene, and registered
under its Slicer module name) and scene bundle (.mrb) I/O. It then sets
`slicer.mrmlScene`, `slicer.app` and `slicer.modules.<name>`.

Use in a test module (the `slicer_app` and `mrml_scene` fixtures are in conftest.py):

    from slicer_harness import load_volume

    def test_mrml_something(mrml_scene):
        volume = load_volume(path)

`add_slice_views()` adds the Red/Yellow/Green slice nodes the layout manager would create.

What slicer-core lacks: `slicer.util.loadVolume`, `loadScene`, `saveScene` and
`saveNode` call `slicer.app.coreIOManager()` (Qt), so use `load_volume`, `save_scene`
and `load_scene` below, which call the same MRML logic Slicer's readers use. Dialogs,
widgets, `ScriptedLoadableModule` and `parameterNodeWrapper` do not exist. slicer-core
ships no share files, so "Colors" is the application logic's own vtkMRMLColorLogic (the
vtkSlicerColorLogic needs Slicer's colour files) and the Terminologies logic is left out.
"""
import os
import sys
import tempfile
import types
from pathlib import Path

import slicer

# Slicer puts a scripted module's directory on sys.path, so SAMed2SlicerLib and the
# bundled samed2 engine import as top-level packages; tests import them the same way.
MODULE_DIR = Path(__file__).resolve().parents[2] / "SAMed2Slicer"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

# Slicer module name -> logic class, as the application registers them.
MODULE_LOGIC_CLASSES = {
    "Volumes": slicer.vtkSlicerVolumesLogic,
    "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic,
    "Markups": slicer.vtkSlicerMarkupsLogic,
    "SubjectHierarchy": slicer.vtkSlicerSubjectHierarchyModuleLogic,
    "Transforms": slicer.vtkSlicerTransformLogic,
    "Sequences": slicer.vtkSlicerSequencesLogic,
    "Tables": slicer.vtkSlicerTablesLogic,
}


class CoreModule:
    """`slicer.modules.<name>`: the module's name and its logic."""

    def __init__(self, name, logic):
        self.name = name
        self._logic = logic

    def logic(self):
        return self._logic


class CoreApplication:
    """`slicer.app` reduced to what logic code and slicer.util's MRML helpers call.

    There are no views, so pausing and resuming rendering has nothing to do.
    """

    def __init__(self, scene, application_logic, cache_path):
        self._scene = scene
        self._application_logic = application_logic
        self.cachePath = str(cache_path)  # qSlicerCoreApplication.cachePath

    def mrmlScene(self):
        return self._scene

    def applicationLogic(self):
        return self._application_logic

    def pauseRender(self):
        pass

    def resumeRender(self):
        pass


class SlicerCore:
    """The started MRML world: scene, application logic and module logics by name."""

    def __init__(self, cache_dir):
        self.scene = slicer.vtkMRMLScene()
        self.application_logic = slicer.vtkSlicerApplicationLogic()
        self.application_logic.SetMRMLScene(self.scene)
        self.logics = {"Colors": self._start_colors()}
        for name, logic_class in MODULE_LOGIC_CLASSES.items():
            self.logics[name] = self._start_logic(name, logic_class())
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene)
        self.cache_dir = cache_dir
        self._bundle_io = self._start_bundle_io(cache_dir)  # kept alive with the scene

    def _start_colors(self):
        colors = self.application_logic.GetColorLogic()
        colors.SetMRMLScene(self.scene)
        colors.AddDefaultColorNodes()
        self.application_logic.SetModuleLogic("Colors", colors)
        return colors

    def _start_logic(self, name, logic):
        logic.SetMRMLApplicationLogic(self.application_logic)
        logic.SetMRMLScene(self.scene)
        self.application_logic.SetModuleLogic(name, logic)
        return logic

    def _start_bundle_io(self, cache_dir):
        """Data I/O with a cache directory, which reading .mrb bundles requires."""
        remote_io = slicer.vtkMRMLRemoteIOLogic()
        remote_io.SetMRMLScene(self.scene)
        remote_io.SetMRMLApplicationLogic(self.application_logic)
        remote_io.GetCacheManager().SetRemoteCacheDirectory(str(cache_dir))
        data_io = slicer.vtkDataIOManagerLogic()
        data_io.SetMRMLScene(self.scene)
        data_io.SetMRMLApplicationLogic(self.application_logic)
        data_io.SetAndObserveDataIOManager(remote_io.GetDataIOManager())
        remote_io.AddDataIOToScene()
        return remote_io, data_io

    def install(self):
        """Expose this world as Slicer's globals."""
        slicer.mrmlScene = self.scene
        slicer.app = CoreApplication(self.scene, self.application_logic, self.cache_dir)
        slicer.modules = types.SimpleNamespace(
            **{name.lower(): CoreModule(name, logic) for name, logic in self.logics.items()})


_started = None


def start():
    """Start slicer-core once per process and return the SlicerCore."""
    global _started
    if _started is None:
        core = SlicerCore(tempfile.mkdtemp(prefix="slicer-core-cache-"))
        core.install()
        _started = core
    return _started


def load_volume(path, name=None):
    """Load a volume file as Slicer's volume reader does; raise RuntimeError on failure."""
    messages = slicer.vtkMRMLMessageCollection()
    volume = slicer.modules.volumes.logic().AddArchetypeVolume(
        str(path), name or Path(path).name.split(".")[0], 0, None, messages)
    if volume is None:
        raise RuntimeError(f"cannot load volume {path}: {messages.GetAllMessagesAsString()}")
    return volume


def save_scene(path):
    """Write slicer.mrmlScene with its data to a .mrb bundle; raise RuntimeError on failure."""
    path = Path(path).resolve()
    messages = slicer.vtkMRMLMessageCollection()
    slicer.mrmlScene.SetRootDirectory(str(path.parent))
    if not slicer.mrmlScene.WriteToMRB(str(path), None, messages):
        raise RuntimeError(f"cannot save scene to {path}: {messages.GetAllMessagesAsString()}")


def load_scene(path):
    """Replace slicer.mrmlScene's content by a .mrb bundle; raise RuntimeError on failure."""
    messages = slicer.vtkMRMLMessageCollection()
    cwd = os.getcwd()
    try:
        loaded = slicer.mrmlScene.ReadFromMRB(str(Path(path).resolve()), True, messages)
    finally:
        os.chdir(cwd)  # on a bundle that is not a zip, ReadFromMRB leaves a deleted temp dir as cwd
    if not loaded:
        raise RuntimeError(f"cannot load scene {path}: {messages.GetAllMessagesAsString()}")


SLICE_VIEWS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}


def add_slice_views():
    """The three slice views of Slicer's default layout (Red axial, Yellow sagittal, Green
    coronal), as the layout manager creates them; returns {name: vtkMRMLSliceNode}."""
    views = {}
    for name, orientation in SLICE_VIEWS.items():
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceNode", name)
        node.SetLayoutName(name)
        node.SetOrientation(orientation)
        views[name] = node
    return views
