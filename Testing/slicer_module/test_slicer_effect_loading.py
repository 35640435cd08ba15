"""Slicer finds the module's Segment Editor effects the way its C++ looks for them.

qSlicerSegmentEditorScriptedEffect::setPythonSource (Modules/Loadable/Segmentations/EditorEffects)
takes the module name from the source file's folder and the class name from the file's base name
(QFileInfo::baseName, plus "Effect" unless it ends with it). It takes the class from that module
if the module is loaded; otherwise it loads the file as that module
(qSlicerScriptedUtils::loadSourceAsModule) and looks again. Slicer 5.6/5.8 get the module with
PyImport_AddModule (an empty one when absent) and load with imp.load_source; 5.10+ read
sys.modules and load with importlib. `find_effect_class` below does each step in that order.

The effect files import Qt and Slicer's SegmentEditorEffects package, which slicer-core lacks: the
subprocess gives them empty placeholder modules (a `qt` module with nothing in it and an
AbstractScriptedSegmentEditorEffect that only keeps `scriptedEffect`); slicer and vtk are
slicer-core's own. What is tested is the loader's lookup and the class's constructor.
"""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "SAMed2Slicer"
EFFECT_BASE = "AbstractScriptedSegmentEditorEffect"

LOADER = r'''
import importlib.util, json, sys, types, warnings
from pathlib import Path

source, loader, imported_first, module_dir = sys.argv[1:5]
sys.path.insert(0, module_dir)  # Slicer puts a scripted module's folder on sys.path
qt = types.ModuleType("qt")
effects = types.ModuleType("SegmentEditorEffects")
class AbstractScriptedSegmentEditorEffect:
    def __init__(self, scriptedEffect):
        self.scriptedEffect = scriptedEffect
effects.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
sys.modules.update(qt=qt, SegmentEditorEffects=effects)


def find_effect_class(source, loader):
    path = Path(source)
    module_name = path.parent.name
    class_name = path.name.split(".")[0]  # QFileInfo::baseName
    if not class_name.endswith("Effect"):
        class_name += "Effect"
    if loader == "5.6":
        module = sys.modules.setdefault(module_name, types.ModuleType(module_name))  # PyImport_AddModule
        if not hasattr(module, class_name):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import imp
            imp.load_source(module_name, source)
    else:
        module = sys.modules.get(module_name)
        if module is None or not hasattr(module, class_name):
            spec = importlib.util.spec_from_file_location(module_name, source)
            sys.modules[module_name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(sys.modules[module_name])
            module = sys.modules[module_name]
    return class_name, getattr(module, class_name, None)


if imported_first == "yes":
    __import__(Path(source).parent.name)
class_name, found = find_effect_class(source, loader)
result = {"class": class_name, "found": found is not None}
if found is not None:
    scripted_effect = types.SimpleNamespace()
    instance = found(scripted_effect)  # qSlicerScriptedUtils instantiates it with the C++ effect
    result.update(name=getattr(scripted_effect, "name", None),
                  base=issubclass(found, AbstractScriptedSegmentEditorEffect),
                  clone_finds_it=find_effect_class(source, loader)[1] is found)
print(json.dumps(result))
'''


def effect_sources():
    """Every file of the module that defines a scripted Segment Editor effect class."""
    sources = []
    for path in sorted(MODULE_DIR.rglob("*.py")):
        if "samed2" in path.relative_to(MODULE_DIR).parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(base, "id", getattr(base, "attr", None)) == EFFECT_BASE for base in node.bases):
                sources.append(path)
                break
    return sources


def load_with_slicers_rule(source, loader, imported_first):
    result = subprocess.run([sys.executable, "-c", LOADER, source.as_posix(), loader, imported_first,
                             str(MODULE_DIR)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_slicer_module_has_a_segment_editor_effect():
    assert [p.relative_to(MODULE_DIR).as_posix() for p in effect_sources()] == [
        "SegmentEditorSAMed2Lib/SegmentEditorEffect.py"]


@pytest.mark.parametrize("loader", ["5.6", "5.10"])
@pytest.mark.parametrize("imported_first", ["yes", "no"])
@pytest.mark.parametrize("source", effect_sources(), ids=lambda p: p.parent.name)
def test_slicer_effect_class_is_found_by_setPythonSource(source, loader, imported_first):
    """Both loaders, with the effect's package imported before (as registerEffect does) or not
    (a clone made after a module reload)."""
    if imported_first == "yes" and not (source.parent / "__init__.py").is_file():
        pytest.fail(f"{source.parent.name} is not a package: Slicer's template puts the effect in a "
                    "SegmentEditor<Name>Lib package")
    result = load_with_slicers_rule(source, loader, imported_first)
    assert result["found"], (f"Slicer looks for class {result['class']} in module {source.parent.name} "
                             f"for {source.relative_to(MODULE_DIR)}: not there")
    assert result["base"] and result["clone_finds_it"]
    assert result["name"] == "SAMed-2"


def test_slicer_module_registers_the_effect_file_it_ships():
    """registerEffect passes the effect's path to setPythonSource: the file found above."""
    source = (MODULE_DIR / "SAMed2Slicer.py").read_text()
    strings = {node.value for node in ast.walk(ast.parse(source))
               if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    for path in effect_sources():
        assert {path.parent.name, path.name} <= strings, f"SAMed2Slicer.py does not register {path.name}"
    assert "setPythonSource(EFFECT_SOURCE)" in source and 'connect("startupCompleted()", registerEffect)' in source
    assert "qt.QTimer.singleShot(0, registerEffect)" in source  # headless late loading (test_slicer_releases.py)
    assert 'connect("effectRegistered(QString)", self.onEffectRegistered)' in source
