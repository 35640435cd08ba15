"""Stand-ins for the parts of 3D Slicer that differ between the releases the module supports
(5.6, 5.8, 5.10, 5.12) and that slicer-core lacks: Qt widgets, `slicer.parameterNodeWrapper`,
`slicer.ScriptedLoadableModule`, `slicer.packaging`. Test-only code, written here from what
Slicer's source does at the tags v5.6.2, v5.8.1, v5.10.0 and v5.12.0 (no Slicer code is copied):

- parameterNodeWrapper (Base/Python/slicer/parameterNodeWrapper/wrapper.py): `connectGui` returns
  the GUI tag from 5.10 (commit b5a65a49a0); 5.6 and 5.8 return None. Every `connectGui` adds a
  ModifiedEvent observer that writes the node into the GUI; only 5.12 removes it in
  `disconnectGui`. A gui-to-node callback writes `connector.read()` inside NodeModify unless the
  GUI is being updated from the node.
- guiConnectors.py `QComboBoxToStringableConnector`: its constructor calls `widget.clear()` and
  `addItem` for each choice; it listens to `currentIndexChanged` and reads
  `choices[widget.currentIndex]` (index -1 reads the last choice).
- QComboBox (Qt 5): `clear()` moves the current index to -1 and emits `currentIndexChanged(-1)`;
  the first `addItem()` into an empty box makes index 0 current and emits `currentIndexChanged(0)`.
- ScriptedLoadableModuleLogic.getParameterNode: the scene's singleton vtkMRMLScriptedModuleNode
  tagged with the module name (created when absent).
- qSlicerScriptedLoadableModuleWidget: `isEntered` is set before Python's `enter()` and cleared
  before `exit()`; `cleanup()` on unload.
- slicer.util.childWidgetVariables: every named descendant becomes an attribute, the last found
  wins (a depth-first walk).
- `slicer.packaging` (pip_ensure) exists only from 5.12; `slicer.util.pip_install` in all.
- pydicom: 2.4.4 is bundled up to 5.10, 3.0.2 from 5.12.
- The Segment Editor's effects (Modules/Loadable/Segmentations/Widgets/qMRMLSegmentEditorWidget.cxx,
  EditorEffects/qSlicerSegmentEditorScriptedEffect.cxx): an editor clones each registered effect
  and calls its `setupOptionsFrame()`; making an effect active calls `deactivate()` on the one
  before and `activate()` on it. Deleting the editor deletes its effects, and their options widgets
  with them, without `deactivate()`; from 5.10 it calls each effect's `cleanup()` first (commit
  64cfcfc6a2; AbstractScriptedSegmentEditorEffect has the empty `cleanup()` from then on).
  PythonQt raises AttributeError when Python touches a deleted Qt object.
"""
import importlib
import sys
import types
import typing
import unittest
from pathlib import Path
from typing import ClassVar
from xml.etree import ElementTree

import slicer
import slicer.util
import vtk

import slicer_harness

RELEASES = ("5.6", "5.8", "5.10", "5.12")
BUNDLED_PYDICOM = {"5.6": "2.4.4", "5.8": "2.4.4", "5.10": "2.4.4", "5.12": "3.0.2"}


def at_least(release, oldest):
    return tuple(map(int, release.split("."))) >= tuple(map(int, oldest.split(".")))


# ---- Qt ------------------------------------------------------------------------------------

class Signal:
    def __init__(self):
        self.slots = []

    def connect(self, slot):
        self.slots.append(slot)

    def disconnect(self, slot):
        self.slots.remove(slot)

    def emit(self, *args):
        for slot in list(self.slots):
            slot(*args)


class Widget:
    """A QObject with PythonQt's `connect("name(args)", slot)`, object name, dynamic properties
    and children."""

    def __init__(self, name="", properties=None):
        self.name = name
        self.properties = dict(properties or {})
        self.children = []
        self.blocked = False
        self.visible = True
        self.enabled = True
        self.text = ""

    def __getattribute__(self, name):
        if name != "__dict__" and object.__getattribute__(self, "__dict__").get("destroyed"):
            raise AttributeError(f"Trying to read attribute '{name}' from a destroyed {type(self).__name__} object")
        return object.__getattribute__(self, name)  # else __getattr__ below, which raises the same if destroyed

    def __setattr__(self, name, value):
        if self.__dict__.get("destroyed"):
            raise AttributeError(f"Trying to set attribute '{name}' on a destroyed {type(self).__name__} object")
        object.__setattr__(self, name, value)

    def _signal(self, signature):
        name = signature.split("(")[0]
        if not isinstance(getattr(self, name, None), Signal):
            setattr(self, name, Signal())
        return getattr(self, name)

    def connect(self, signature, slot):
        self._signal(signature).connect(slot)

    def disconnect(self, signature, slot):
        self._signal(signature).disconnect(slot)

    def emit(self, signature, *args):
        if not self.blocked:
            self._signal(signature).emit(*args)

    def blockSignals(self, block):
        was, self.blocked = self.blocked, block
        return was

    def property(self, name):
        return self.properties.get(name)

    def isWidgetType(self):
        return True

    def findChildren(self, _type=None):
        found = []
        for child in self.children:
            found += [child, *child.findChildren()]
        return found

    def setMRMLScene(self, scene):
        pass

    def __getattr__(self, name):  # setToolTip, show, setWindowModality...: nothing to imitate
        if name.startswith("__"):
            raise AttributeError(name)
        if self.__dict__.get("destroyed"):
            raise AttributeError(f"Trying to read attribute '{name}' from a destroyed {type(self).__name__} object")
        return lambda *args, **kwargs: None


class QComboBox(Widget):
    def __init__(self, name="", properties=None):
        super().__init__(name, properties)
        self.items = []
        self._index = -1
        self.currentIndexChanged = Signal()
        self.currentTextChanged = Signal()

    def _set_index(self, index):
        if index != self._index:
            self._index = index
            self.emit("currentIndexChanged(int)", index)
            self.emit("currentTextChanged(QString)", self.currentText)

    def clear(self):
        self.items = []
        self._set_index(-1)

    def addItem(self, text):
        self.items.append(str(text))
        if self._index == -1:
            self._set_index(0)

    @property
    def currentIndex(self):
        return self._index

    @currentIndex.setter
    def currentIndex(self, index):
        self._set_index(index if 0 <= index < len(self.items) else -1)

    @property
    def currentText(self):
        return self.items[self._index] if self._index >= 0 else ""

    @currentText.setter
    def currentText(self, text):
        if text in self.items:
            self._set_index(self.items.index(text))


class ctkPathLineEdit(Widget):
    def __init__(self, name="", properties=None):
        super().__init__(name, properties)
        self._path = ""
        self.currentPathChanged = Signal()

    @property
    def currentPath(self):
        return self._path

    @currentPath.setter
    def currentPath(self, path):
        if path != self._path:
            self._path = path
            self.emit("currentPathChanged(QString)", path)


class SegmentEditorWidget(Widget):
    """qMRMLSegmentEditorWidget: the active effect and whether it observes the slice views.
    Activating an effect sets up the view observations, deactivating removes them
    (qMRMLSegmentEditorWidget::updateWidgetFromMRML)."""

    def __init__(self, name="", properties=None):
        super().__init__(name, properties)
        self.activeEffectName = ""
        self.observingViews = False
        self.editorNode = None
        self.source = None

    def setMRMLSegmentEditorNode(self, node):
        self.editorNode = node

    def sourceVolumeNode(self):
        return self.source

    def setActiveEffectByName(self, name):
        self.activeEffectName = name
        self.observingViews = True

    def setActiveEffect(self, effect):
        self.activeEffectName = "" if effect is None else effect
        self.observingViews = effect is not None

    def setupViewObservations(self):
        self.observingViews = True

    def removeViewObservations(self):
        self.observingViews = False


WIDGET_CLASSES = {"QComboBox": QComboBox, "ctkPathLineEdit": ctkPathLineEdit,
                  "qMRMLSegmentEditorWidget": SegmentEditorWidget}


def _ui_value(element):
    value = element[0]
    return value.text or "" if value.tag == "string" else value.text


def load_ui(path):
    """slicer.util.loadUI: the .ui file's widget tree, combo box items filled in."""
    def build(element):
        properties = {p.get("name"): _ui_value(p) for p in element.findall("property")}
        widget = WIDGET_CLASSES.get(element.get("class"), Widget)(element.get("name"), properties)
        widget.text = properties.get("text", "")
        for child in element.iter("widget"):
            if child is not element and _parent_widget(element, child):
                widget.children.append(build(child))
        for item in element.findall("item"):
            widget.addItem(_ui_value(item.find("property")))
        return widget

    return build(ElementTree.parse(path).getroot().find("widget"))


def _parent_widget(parent, child):
    """Whether `parent` is the nearest <widget> above `child` (layouts and items sit between)."""
    def nearest(node, target, owner):
        for sub in node:
            if sub is target:
                return owner
            found = nearest(sub, target, sub if sub.tag == "widget" else owner)
            if found is not None:
                return found
        return None
    return nearest(parent, child, parent) is parent


def destroy(widget):
    """The C++ side of `widget` and of its children is deleted."""
    for each in [widget, *widget.findChildren()]:
        object.__setattr__(each, "destroyed", True)


def child_widget_variables(widget):
    ui = types.SimpleNamespace()
    for child in widget.findChildren():
        if child.name:
            setattr(ui, child.name, child)
    return ui


class QTimer(Widget):
    posted: ClassVar[list] = []  # singleShot callbacks, run by the test when it lets the event loop turn

    def __init__(self):
        super().__init__()
        self.active = False

    @staticmethod
    def singleShot(ms, callback):
        QTimer.posted.append(callback)

    def start(self, *args):
        self.active = True

    def stop(self):
        self.active = False

    def isActive(self):
        return self.active


class _AnyAttribute(type):
    def __getattr__(cls, name):
        return cls


class Anything(metaclass=_AnyAttribute):
    """Qt classes the code only constructs, calls statically or reads constants of (QMessageBox,
    QApplication.setOverrideCursor, Qt.WaitCursor...): nothing there differs between releases."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return Anything()

    def __call__(self, *args, **kwargs):
        return Anything()


def qt_module():
    qt = types.ModuleType("qt")
    qt.QTimer, qt.QComboBox, qt.QWidget = QTimer, QComboBox, Widget
    qt.__getattr__ = _qt_class
    return qt


def ctk_module():
    """CTK's widgets the panel builds in code (ctkCollapsibleButton): only constructed and set."""
    ctk = types.ModuleType("ctk")
    ctk.__getattr__ = lambda name: Anything if name.startswith("ctk") else _no_attribute(name)
    return ctk


def _no_attribute(name):
    raise AttributeError(name)


def _qt_class(name):
    if not name.startswith("Q"):  # __file__, __path__...: what importers probe
        raise AttributeError(name)
    return Anything


# ---- slicer.parameterNodeWrapper -----------------------------------------------------------

class Choice:
    def __init__(self, choices):
        self.choices = list(choices)


class ComboConnector:
    def __init__(self, widget, choices):
        self.widget, self.choices = widget, choices
        self.callback = None
        widget.clear()
        for choice in choices:
            widget.addItem(str(choice))

    def changed(self, *args):
        self.callback()

    def listen(self, callback):
        if callback is None:
            self.widget.currentIndexChanged.disconnect(self.changed)
        else:
            self.widget.currentIndexChanged.connect(self.changed)
        self.callback = callback

    def read(self):
        return self.choices[self.widget.currentIndex]

    def write(self, value):
        self.widget.currentIndex = self.choices.index(value)


class PathConnector:
    def __init__(self, widget, kind):
        self.widget, self.kind = widget, kind
        self.callback = None

    def changed(self, *args):
        self.callback()

    def listen(self, callback):
        if callback is None:
            self.widget.currentPathChanged.disconnect(self.changed)
        else:
            self.widget.currentPathChanged.connect(self.changed)
        self.callback = callback

    def read(self):
        return self.kind(self.widget.currentPath)

    def write(self, value):
        self.widget.currentPath = str(value)


def _connector(widget, annotation):
    kind, *extras = typing.get_args(annotation) or (annotation,)
    choice = next((e for e in extras if isinstance(e, Choice)), None)
    if isinstance(widget, QComboBox) and choice is not None:
        return ComboConnector(widget, choice.choices)
    if isinstance(widget, ctkPathLineEdit) and kind is Path:
        return PathConnector(widget, kind)
    raise RuntimeError(f"no GUI connector for {widget.name} and {annotation}")


def wrapper_module(release):
    """slicer.parameterNodeWrapper as `release` behaves."""
    def parameterNodeWrapper(cls):
        fields = typing.get_type_hints(cls, include_extras=True)
        defaults = {name: getattr(cls, name) for name in fields}

        def value_type(name):
            return (typing.get_args(fields[name]) or (fields[name],))[0]

        class Wrapper:
            def __init__(self, node):
                self.parameterNode = node
                self._parameterGUIs = {}
                self._nextParameterGUIsTag = 0
                self._guiObservers = {}
                self._updatingGUI = False
                for name, default in defaults.items():
                    if name not in node.GetParameterNamesAsCommaSeparatedList().split(","):
                        node.SetParameter(name, str(default))

            def __getattr__(self, name):
                if name in fields:
                    return value_type(name)(self.parameterNode.GetParameter(name) or defaults[name])
                raise AttributeError(name)

            def __setattr__(self, name, value):
                if name in fields:
                    self.parameterNode.SetParameter(name, str(value))
                else:
                    object.__setattr__(self, name, value)

            def connectGui(self, gui):
                mapping = {w.property("SlicerParameterName"): w for w in vars(gui).values()
                           if w.property("SlicerParameterName")}
                connectors = {name: _connector(widget, fields[name]) for name, widget in mapping.items()}
                tag = self._nextParameterGUIsTag
                self._nextParameterGUIsTag += 1
                self._parameterGUIs[tag] = connectors
                for name, connector in connectors.items():
                    connector.write(getattr(self, name))
                    connector.listen(self._gui_to_node(name, connector))
                self._guiObservers[tag] = self.parameterNode.AddObserver(
                    vtk.vtkCommand.ModifiedEvent, lambda caller, event: self._node_to_gui())
                return tag if at_least(release, "5.10") else None

            def disconnectGui(self, tag):
                for connector in self._parameterGUIs.pop(tag, {}).values():
                    connector.listen(None)
                if at_least(release, "5.12") and tag in self._guiObservers:
                    self.parameterNode.RemoveObserver(self._guiObservers.pop(tag))

            def _gui_to_node(self, name, connector):
                def callback():
                    with slicer.util.NodeModify(self.parameterNode):
                        if not self._updatingGUI:
                            setattr(self, name, connector.read())
                return callback

            def _node_to_gui(self):
                if self._updatingGUI:
                    return
                self._updatingGUI = True
                try:
                    for connectors in self._parameterGUIs.values():
                        for name, connector in connectors.items():
                            connector.write(getattr(self, name))
                finally:
                    self._updatingGUI = False

            def AddObserver(self, event, callback, priority=0.0):
                return self.parameterNode.AddObserver(event, callback, priority)

            def RemoveObserver(self, tag):
                self.parameterNode.RemoveObserver(tag)

        Wrapper.__name__ = cls.__name__
        return Wrapper

    module = types.ModuleType("slicer.parameterNodeWrapper")
    module.parameterNodeWrapper, module.Choice = parameterNodeWrapper, Choice
    return module


# ---- slicer.ScriptedLoadableModule ---------------------------------------------------------

class ModuleParent(Widget):
    """qSlicerScriptedLoadableModuleWidget / qSlicerAbstractModule as the Python side sees it."""

    def __init__(self):
        super().__init__()
        self.isEntered = False


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent
        self.moduleName = type(self).__name__


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = type(self).__name__[:-len("Logic")]

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node = slicer.mrmlScene.AddNode(node)
        return node


class Layout(Widget):
    def addWidget(self, widget):
        self.children.append(widget)

    def addStretch(self, *args):
        pass


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent or ModuleParent()
        self.moduleName = type(self).__name__[:-len("Widget")]

    def setup(self):
        self.layout = Layout()

    def resourcePath(self, filename):
        return str(slicer_harness.MODULE_DIR / "Resources" / filename)

    def cleanup(self):
        pass


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=None):
        pass


def scripted_module():
    module = types.ModuleType("slicer.ScriptedLoadableModule")
    for item in (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget,
                 ScriptedLoadableModuleTest):
        setattr(module, item.__name__, item)
    return module


# ---- the application -----------------------------------------------------------------------

class Application(slicer_harness.CoreApplication):
    """slicer.app with signals and command options (headless: no main window)."""

    def __init__(self, core):
        super().__init__(core.scene, core.application_logic, core.cache_dir)
        self.signals = Widget()

    def connect(self, signature, slot):
        self.signals.connect(signature, slot)

    def commandOptions(self):
        return types.SimpleNamespace(noMainWindow=True)

    def layoutManager(self):  # no main window, no view layout
        return None

    def processEvents(self):
        pass


# ---- Segment Editor effects ---------------------------------------------------------------

class EffectFactory(Widget):
    """qSlicerSegmentEditorEffectFactory: the registered effects, which each editor clones."""

    def __init__(self):
        super().__init__()
        self.effects = []

    def registerEffect(self, effect):
        self.effects.append(effect)

    def registeredEffects(self):
        return list(self.effects)


class ScriptedEffect(Widget):
    """qSlicerSegmentEditorScriptedEffect: `setPythonSource` instantiates the class named after the
    file (with "Effect") from the module named after its folder, with this effect; its parameters,
    options widgets and undo states."""

    def __init__(self, parent=None):
        super().__init__()
        self.python = None
        self.parameters = {}
        self.optionsWidgets = []
        self.undoStates = 0

    def setPythonSource(self, path):
        path = Path(path)
        class_name = path.name.split(".")[0]
        class_name += "" if class_name.endswith("Effect") else "Effect"
        self.python = getattr(importlib.import_module(path.parent.name), class_name)(self)

    def self(effect):  # PythonQt's name for the Python object
        return effect.python

    def parameter(self, name):
        return self.parameters.get(name, "")

    def integerParameter(self, name):
        return int(self.parameters.get(name) or 0)

    def setParameter(self, name, value):
        self.parameters[name] = str(value)

    def setParameterDefault(self, name, value):
        self.parameters.setdefault(name, str(value))

    def parameterSetNode(self):  # the editor's node, nothing chosen yet
        return types.SimpleNamespace(GetSourceVolumeNode=lambda: None, GetSegmentationNode=lambda: None,
                                     GetSelectedSegmentID=lambda: "")

    def addOptionsWidget(self, widget):
        self.optionsWidgets.append(widget)

    def saveStateForUndo(self):
        self.undoStates += 1

    # qSlicerSegmentEditorAbstractEffect::ConfirmationResult and confirmCurrentSegmentVisible (the same in
    # 5.6 to 5.12): whether the user let an edit of a hidden segment go on, and whether a dialog asked
    NotConfirmed, ConfirmedWithoutDialog, ConfirmedWithDialog = 0, 1, 2
    segmentVisibleAnswer = ConfirmedWithoutDialog

    def confirmCurrentSegmentVisible(self):
        return self.segmentVisibleAnswer


def effects_module(release):
    """SegmentEditorEffects (its abstract scripted effect) as `release` has it."""
    class AbstractScriptedSegmentEditorEffect:
        def __init__(self, scriptedEffect):
            self.scriptedEffect = scriptedEffect

        def register(self):
            slicer.qSlicerSegmentEditorEffectFactory.instance().registerEffect(self.scriptedEffect)

    if at_least(release, "5.10"):
        AbstractScriptedSegmentEditorEffect.cleanup = lambda self: None
    module = types.ModuleType("SegmentEditorEffects")
    module.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
    return module


class SegmentEditor:
    """qMRMLSegmentEditorWidget's effects in `release`: cloned from the registered ones, options
    frames set up, one active at a time; `delete()` is the editor's destructor."""

    def __init__(self, release):
        self.release = release
        factory = slicer.qSlicerSegmentEditorEffectFactory.instance()
        self.effects = {effect.name: effect.self().clone() for effect in factory.registeredEffects()}
        for effect in self.effects.values():
            effect.self().setupOptionsFrame()
        self.active = None

    def setActiveEffectByName(self, name):
        if self.active is not None:
            self.active.self().deactivate()
        self.active = self.effects.get(name)
        if self.active is not None:
            self.active.self().activate()

    def delete(self):
        for effect in self.effects.values():
            if at_least(self.release, "5.10"):
                effect.self().cleanup()
            for widget in [effect, *effect.optionsWidgets]:
                destroy(widget)


def release_modules(release):
    """{module name: module} to put on sys.modules for `release`; slicer.packaging from 5.12."""
    modules = {"qt": qt_module(), "ctk": ctk_module(),
               "slicer.parameterNodeWrapper": wrapper_module(release),
               "slicer.ScriptedLoadableModule": scripted_module(),
               "slicer.i18n": types.SimpleNamespace(tr=lambda text: text, translate=lambda context, text: text),
               "SegmentEditorEffects": effects_module(release),
               "qSlicerSegmentationsEditorEffectsPythonQt": types.SimpleNamespace(
                   qSlicerSegmentEditorScriptedEffect=ScriptedEffect)}
    if at_least(release, "5.12"):
        packaging = types.ModuleType("slicer.packaging")
        packaging.pip_ensure = lambda requirements, **options: None
        modules["slicer.packaging"] = packaging
    return modules


def install(release, monkeypatch, core):
    """Make `import slicer...` and `import qt` behave as in `release` for one test."""
    for name, module in release_modules(release).items():
        monkeypatch.setitem(sys.modules, name, module)
    if not at_least(release, "5.12"):
        monkeypatch.delitem(sys.modules, "slicer.packaging", raising=False)
    monkeypatch.setattr(slicer, "app", Application(core))
    factory = EffectFactory()
    monkeypatch.setattr(slicer, "qSlicerSegmentEditorEffectFactory",
                        types.SimpleNamespace(instance=lambda: factory), raising=False)
    monkeypatch.setattr(slicer.util, "loadUI", load_ui, raising=False)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", child_widget_variables, raising=False)
    monkeypatch.setattr(slicer.util, "mainWindow", lambda: None, raising=False)
    monkeypatch.setattr(QTimer, "posted", [])
    monkeypatch.setattr(slicer.util, "errorDisplay", _fail, raising=False)


def _fail(text, **kwargs):
    """slicer.util.errorDisplay: a dialog the module shows is a failure of the test."""
    raise AssertionError(f"the module showed an error: {text}\n{kwargs.get('detailedText', '')}")
