"""SAMed-2 module for 3D Slicer: the Qt panel. The logic lives in SAMed2SlicerLib (Qt-free), the
Segment Editor effect in SegmentEditorSAMed2Lib, the controller shared by both in SAMed2SlicerQt,
the engine in samed2; nothing here imports torch or installs anything at import time."""
import os
import shutil
import tempfile
import unittest
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from samed2.choices import BACKENDS, DEVICES, EFFECT_NAME, EXPORT_KINDS, PRECISIONS, PRESETS, EngineSettings
from SAMed2SlicerLib import model_weights
from SAMed2SlicerLib.geometry import describe_volume
from SAMed2SlicerLib.logic import EXPORT_SUFFIXES, SAMed2Logic, with_suffix
from SAMed2SlicerQt.controller import Controller, show_error
from SAMed2SlicerQt.finetune_section import FinetuneSection

HOMEPAGE = "https://github.com/samed2slicer/SlicerSAMed2"
DICOM_SEG, NIFTI, SLICER_SEGMENTATION = EXPORT_KINDS
ENGINE_DEFAULTS = EngineSettings()
EXPORT_FORMATS = {"DICOM-SEG file": DICOM_SEG, "DICOM-SEG into the DICOM database": DICOM_SEG,
                  "NIfTI file": NIFTI, "Slicer segmentation file": SLICER_SEGMENTATION}
TO_DATABASE = "DICOM-SEG into the DICOM database"
PATH_FIELDS = {"dicomFolder": "dicomFolderPathLineEdit", "exportPath": "exportPathLineEdit"}
EFFECT_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "SegmentEditorSAMed2Lib",
                             "SegmentEditorEffect.py").replace("\\", "/")


class SAMed2Slicer(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SAMed-2")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["SAMed2Slicer contributors (samed2slicer)"]
        self.parent.helpText = _(
            "Interactive segmentation of CT and MRI volumes with SAMed-2 and SAM 2: click or drag a box on one"
            " slice, propagate the result through the volume, correct it and export it (DICOM-SEG, NIfTI, NRRD)."
            " See the <a href=\"{homepage}\">project page</a>."
        ).format(homepage=HOMEPAGE)
        self.parent.acknowledgementText = _(
            "Uses the models of SAMed-2 (Selective Memory Enhanced Medical Segment Anything"
            " Model) and SAM 2 (Segment Anything in Images and Videos, Meta AI). Both are"
            " reimplemented here; their weights keep their own licences."
        )
        if startupCompleted():  # the module was loaded later (Extension Wizard, Reload)
            registerEffect()
        else:
            slicer.app.connect("startupCompleted()", registerEffect)
            if slicer.app.commandOptions().noMainWindow:
                # Without a main window Slicer emits startupCompleted() from a 0 ms timer once the
                # modules are loaded: a module loaded after that (loadModule from a script) would
                # wait for it forever. This timer fires after it in both cases (registering twice
                # is harmless).
                qt.QTimer.singleShot(0, registerEffect)


def startupCompleted():
    """Whether Slicer has started: with a main window it emits startupCompleted() when the window
    is first shown (qSlicerApplicationHelper), so a visible main window means the signal has gone."""
    window = slicer.util.mainWindow()
    return window is not None and window.isVisible()


def registerEffect():
    """Make the SAMed-2 effect available in every Segment Editor (once).

    The package is imported first, so Slicer's loader finds the class on sys.modules (as its
    ScriptedSegmentEditorEffect template's layout allows) instead of loading the file again."""
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    import SegmentEditorSAMed2Lib  # noqa: F401 (sys.modules entry for setPythonSource)

    factory = slicer.qSlicerSegmentEditorEffectFactory.instance()
    if any(effect.name == EFFECT_NAME for effect in factory.registeredEffects()):
        return
    effect = effects.qSlicerSegmentEditorScriptedEffect(None)
    effect.setPythonSource(EFFECT_SOURCE)
    effect.self().register()


@parameterNodeWrapper
class SAMed2SlicerParameterNode:
    """Module settings saved with the scene (prompts, segments and effect settings are saved
    in their own nodes)."""

    model: str = ENGINE_DEFAULTS.model
    device: Annotated[str, Choice(list(DEVICES))] = ENGINE_DEFAULTS.device
    preset: Annotated[str, Choice(list(PRESETS))] = ENGINE_DEFAULTS.preset
    precision: Annotated[str, Choice(list(PRECISIONS))] = ENGINE_DEFAULTS.precision
    backend: Annotated[str, Choice(list(BACKENDS))] = ENGINE_DEFAULTS.backend
    exportFormat: Annotated[str, Choice(list(EXPORT_FORMATS))] = next(iter(EXPORT_FORMATS))
    # Plain strings, bound to their path fields by the widget: the wrapper's Path connector shows
    # an unset Path() as "."
    dicomFolder: str = ""
    exportPath: str = ""


class SAMed2SlicerLogic(ScriptedLoadableModuleLogic, SAMed2Logic):
    """The module's logic (SAMed2SlicerLib.logic.SAMed2Logic: scripts drive the module through
    it), with the module's parameter node and segment editor node."""

    instance = None  # moduleLogic()

    def getParameterNode(self):
        return SAMed2SlicerParameterNode(super().getParameterNode())

    @staticmethod
    def segmentEditorNode():
        node = slicer.mrmlScene.GetSingletonNode("SAMed2", "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.vtkMRMLSegmentEditorNode()
            node.SetSingletonTag("SAMed2")
            node = slicer.mrmlScene.AddNode(node)
        return node


def connectGui(wrapper, gui):
    """wrapper.connectGui(gui), returning the tag disconnectGui needs. Slicer 5.6 and 5.8 return
    None (fixed in 5.10): their tag is the wrapper's next one, read just before connecting."""
    tag = wrapper._nextParameterGUIsTag
    returned = wrapper.connectGui(gui)
    return tag if returned is None else returned


def moduleLogic():
    """The module's one Logic, shared by the panel, the Segment Editor effect and scripts."""
    if SAMed2SlicerLogic.instance is None:
        SAMed2SlicerLogic.instance = SAMed2SlicerLogic()
    return SAMed2SlicerLogic.instance


class SAMed2SlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel, built from Resources/UI/SAMed2Slicer.ui."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._download = None
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        panel = slicer.util.loadUI(self.resourcePath("UI/SAMed2Slicer.ui"))
        self.layout.addWidget(panel)
        self.ui = slicer.util.childWidgetVariables(panel)
        panel.setMRMLScene(slicer.mrmlScene)
        self.logic = moduleLogic()  # slicer.util.getModuleLogic("SAMed2Slicer") returns it
        self.controller = Controller.get(self.logic)
        self.controller.listeners.append(self.showStatus)
        editor = self.ui.segmentEditorWidget
        editor.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
        editor.connect("sourceVolumeNodeChanged(vtkMRMLVolumeNode*)", self.onSourceVolumeChanged)
        # Effects registered after this editor was built (the SAMed-2 one at startupCompleted())
        # appear only when the list is updated, as Slicer's Segment Editor module does it.
        self._effectFactory = slicer.qSlicerSegmentEditorEffectFactory.instance()
        self._effectFactory.connect("effectRegistered(QString)", self.onEffectRegistered)
        self.ui.modelComboBox.connect("currentTextChanged(QString)", self.onModelChanged)
        self.ui.downloadButton.connect("clicked()", self.onDownload)
        self.ui.importButton.connect("clicked()", self.onImport)
        self.ui.cancelDownloadButton.connect("clicked()", self.onCancelDownload)
        self.ui.exportButton.connect("clicked()", self.onExport)
        for field, name in PATH_FIELDS.items():
            getattr(self.ui, name).connect("currentPathChanged(QString)",
                                           lambda path, field=field: self.onPathChanged(field, path))
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)
        self.initializeParameterNode()
        self.finetuneSection = FinetuneSection(self.layout, self.logic, self.controller, editor, self.onModelRegistered)
        self.layout.addStretch(1)

    def cleanup(self):
        self.removeObservers()
        self._effectFactory.disconnect("effectRegistered(QString)", self.onEffectRegistered)
        if self.showStatus in self.controller.listeners:
            self.controller.listeners.remove(self.showStatus)
        self.logic.close()

    def enter(self):
        self.initializeParameterNode()
        self.ui.segmentEditorWidget.setupViewObservations()
        self.ui.segmentEditorWidget.installKeyboardShortcuts()
        with self.controller.reporting(_("Listing the models")):
            self.refreshModels()
        self.onSourceVolumeChanged(self.ui.segmentEditorWidget.sourceVolumeNode())

    def onEffectRegistered(self, name):
        self.ui.segmentEditorWidget.updateEffectList()

    def exit(self):
        self.ui.segmentEditorWidget.setActiveEffect(None)
        self.ui.segmentEditorWidget.uninstallKeyboardShortcuts()
        self.ui.segmentEditorWidget.removeViewObservations()

    # ---- parameter node --------------------------------------------------------------------

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneEndImport(self, caller, event):
        """A loaded scene restores the editor node's active effect: while the panel is hidden that
        would turn clicks in every slice view into SAMed-2 prompts. The editor applies it when the
        scene's batch processing ends, after this event: look once the import is over."""
        qt.QTimer.singleShot(0, self.deactivateEffectIfHidden)

    def deactivateEffectIfHidden(self):
        if not self.parent.isEntered:
            self.ui.segmentEditorWidget.setActiveEffect(None)

    def initializeParameterNode(self):
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, parameterNode):
        """Bind the panel to `parameterNode` (a wrapper), once per MRML node: every connectGui
        refills the combo boxes, and a connection left behind writes its first choice back."""
        if (parameterNode is not None and self._parameterNode is not None
                and parameterNode.parameterNode is self._parameterNode.parameterNode):
            return
        if self._parameterNode is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterChanged)
        self._parameterNode = parameterNode
        if parameterNode is not None:
            self._parameterNodeGuiTag = connectGui(parameterNode, self.ui)
            self.addObserver(parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterChanged)
            self.onParameterChanged()

    def onParameterChanged(self, caller=None, event=None):
        node = self._parameterNode
        for field, name in PATH_FIELDS.items():
            if getattr(self.ui, name).currentPath != getattr(node, field):
                getattr(self.ui, name).currentPath = getattr(node, field)
        self.logic.configure(model=node.model, device=node.device, preset=node.preset, precision=node.precision,
                             backend=node.backend)

    def onPathChanged(self, field, path):
        if self._parameterNode is not None:
            setattr(self._parameterNode, field, path)

    # ---- model and weights -----------------------------------------------------------------

    def refreshModels(self):
        """List the models and the chosen one's weights status (needs the engine's packages)."""
        if not self.controller.packages_ready():
            self.ui.weightsStatusLabel.text = _(
                "SAMed-2 needs PyTorch and a few Python packages. They are installed (after you confirm) the first "
                "time you download a model, import weights or segment.")
            return
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for name in model_weights.model_names(self.logic.cache_dir):
            combo.addItem(name)
        combo.currentText = self._parameterNode.model or self.logic.model_name()  # "": the best cached
        combo.blockSignals(wasBlocked)
        self.updateWeightsStatus()

    def updateWeightsStatus(self):
        if self._parameterNode is not None:  # None after a scene close until the module is entered again
            name = self._parameterNode.model or self.logic.model_name()
            self.ui.weightsStatusLabel.text = model_weights.status_line(name, self.logic.cache_dir)

    def onModelChanged(self, name):
        if name and self._parameterNode is not None:
            self._parameterNode.model = name
            self.onParameterChanged()
            self.updateWeightsStatus()

    def onModelRegistered(self, name):
        self._parameterNode.model = name  # the logic uses it already
        self.refreshModels()

    def onDownload(self):
        if not self.controller.ensure_ready():
            return
        self.refreshModels()
        with self.controller.reporting(_("Starting the download")):
            self._download = self.logic.download(on_progress=self.onDownloadProgress, on_end=self.onDownloadEnd)
            self.controller.watch_jobs()
            self.ui.downloadProgressBar.visible = True
            self.ui.downloadButton.enabled = False
            self.ui.cancelDownloadButton.enabled = True

    def onDownloadProgress(self, job, progress):
        fraction = progress.fraction
        self.ui.downloadProgressBar.maximum = 100 if fraction is not None else 0
        self.ui.downloadProgressBar.value = int(100 * fraction) if fraction is not None else 0
        self.ui.weightsStatusLabel.text = _("Downloading: {done:,.0f} MB").format(done=progress.done / 1e6)

    def onDownloadEnd(self, job):
        self.ui.downloadProgressBar.visible = False
        self.ui.downloadButton.enabled = True
        self.ui.cancelDownloadButton.enabled = False
        self.updateWeightsStatus()
        if job.error is not None and not job.cancelled:
            show_error(_("The download"), job.error)

    def onCancelDownload(self):
        if self._download is not None:
            self._download.cancel()

    def onImport(self):
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Import model weights"), "",
                                              _("Checkpoints (*.pt *.pth *.safetensors);;All files (*)"))
        if not path or not self.controller.ensure_ready():
            return
        with self.controller.reporting(_("Importing the checkpoint")):
            self.logic.import_weights(path)
            self.showStatus(_("Imported {path}").format(path=path))
        self.refreshModels()

    # ---- segmenting ------------------------------------------------------------------------

    def onSourceVolumeChanged(self, volumeNode):
        self.ui.volumeInfoLabel.text = describe_volume(volumeNode)
        if volumeNode is not None and self.parent.isEntered and self.controller.packages_ready():
            self.ui.segmentEditorWidget.setActiveEffectByName(EFFECT_NAME)

    def showStatus(self, message, progress=None):
        self.ui.moduleStatusLabel.text = message

    # ---- export ----------------------------------------------------------------------------

    def onExport(self):
        editor = self.ui.segmentEditorWidget
        dicom = EXPORT_FORMATS[self._parameterNode.exportFormat] == DICOM_SEG
        if dicom and not (self.controller.ensure_ready(dicom=True) and self.controller.dicom_packages_loaded()):
            return  # NIfTI and NRRD need no extra packages
        with self.controller.reporting(_("Export")):
            self.ui.exportStatusLabel.text = self.export(editor.sourceVolumeNode(), editor.segmentationNode(),
                                                         self._parameterNode.exportFormat)

    def export(self, volume, segmentation, exportFormat):
        """Write the export; returns the line shown under the button. A DICOM-SEG written to a file
        can also go into the DICOM database, which sends it on to a PACS."""
        kind = EXPORT_FORMATS[exportFormat]
        toDatabase = exportFormat == TO_DATABASE
        path = self.logic.temporary_seg_path() if toDatabase else self._parameterNode.exportPath or None
        message = self.logic.export(volume, segmentation, kind, path, self._parameterNode.dicomFolder or None,
                                    slicer.dicomDatabase)
        if kind != DICOM_SEG or not (toDatabase or slicer.util.confirmYesNoDisplay(
                _("Also put the DICOM-SEG into Slicer's DICOM database? From there the DICOM module sends it to a "
                  "PACS."), windowTitle=_("SAMed-2 export"))):
            return message
        from SAMed2SlicerLib.export import import_into_dicom_database

        written = with_suffix(path, EXPORT_SUFFIXES[kind])
        import_into_dicom_database(written, slicer.dicomDatabase)
        if toDatabase:
            shutil.rmtree(written.parent)  # the temporary export; kept (and named) when the import failed
        return message + _(" Imported into the DICOM database: the DICOM module sends it to a PACS (right-click, "
                           "Send).")


class SAMed2SlicerTest(ScriptedLoadableModuleTest):
    """The whole workflow inside Slicer (Reload and Test, or the Self Tests module): a sample CT,
    a small SAM 2.1 model with random weights (it checks where results land, not their
    quality), a click through the effect, propagation, undo and export."""

    def setUp(self):
        slicer.mrmlScene.Clear()
        self._kept = None

    def tearDown(self):
        """Give the user's model and device back (the test configures random weights on the CPU)."""
        if self._kept is not None:
            node, settings = self._kept
            for field, value in settings.items():
                setattr(node, field, value)
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Self Tests and Reload and Test call this outside a unittest runner, which would show a
        skip as a failure."""
        self.setUp()
        try:
            self.test_click_propagate_undo_export()
        except unittest.SkipTest as skipped:
            self.delayDisplay(f"Skipped: {skipped}")
        finally:
            self.tearDown()

    def test_click_propagate_undo_export(self):
        import numpy as np

        widget, volume, segmentation, segmentId = self._setUpWorkflow()
        index = self._clickInRedView(widget, volume, segmentation, segmentId)
        afterClick = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)

        self.delayDisplay("Propagate three slices up, then undo")
        effect = widget.ui.segmentEditorWidget.activeEffect().self()
        effect.ui.directionComboBox.currentText = "up"
        effect.ui.lastSliceSpinBox.value = index + 3
        effect.onPropagate()
        while widget.logic.jobs.jobs:  # polled by the module's job timer
            slicer.app.processEvents()
        propagated = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)
        self.assertEqual(sorted(set(np.nonzero(propagated)[0])), list(range(index, index + 4)))
        widget.ui.segmentEditorWidget.undo()
        np.testing.assert_array_equal(
            slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume), afterClick)

        self.delayDisplay("Export NIfTI")
        output = Path(tempfile.mkdtemp()) / "segments.nii.gz"
        widget._parameterNode.exportPath = str(output)
        widget._parameterNode.exportFormat = "NIfTI file"
        widget.onExport()
        self.assertTrue(output.is_file())
        self.delayDisplay("Test passed")

    def _setUpWorkflow(self):
        """A sample CT, a segmentation with one segment, the module shown with the effect on."""
        import SampleData

        self.delayDisplay("Loading a sample CT and a small model")
        volume = SampleData.downloadSample("CTChest")
        widget = slicer.util.getModuleWidget("SAMed2Slicer")
        slicer.util.selectModule("SAMed2Slicer")
        plan = widget.logic.install_plan()
        if plan.needed:  # Slicer's pip_ensure installs nothing in --testing mode: install first
            self.skipTest("SAMed-2's packages are not installed: " + "; ".join(plan.missing()))
        self._kept = (widget._parameterNode, {"model": widget._parameterNode.model,
                                              "device": widget._parameterNode.device})
        widget.logic.use_model("test-model", _randomTinyModel())
        widget._parameterNode.model = "test-model"
        widget._parameterNode.device = "cpu"
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentId = segmentation.GetSegmentation().AddEmptySegment("object", "Object")
        editor = widget.ui.segmentEditorWidget
        editor.setSegmentationNode(segmentation)
        editor.setSourceVolumeNode(volume)
        editor.setCurrentSegmentID(segmentId)
        editor.setActiveEffectByName(EFFECT_NAME)
        return widget, volume, segmentation, segmentId

    def _clickInRedView(self, widget, volume, segmentation, segmentId):
        """Click the middle of the red view; only its slice of the segment gets voxels."""
        import numpy as np

        self.delayDisplay("Click in the red view")
        redWidget = slicer.app.layoutManager().sliceWidget("Red")
        redWidget.mrmlSliceNode().RotateToVolumePlane(volume)
        size = redWidget.sliceView().size
        middle = (size.width() // 2, size.height() // 2)
        slicer.util.clickAndDrag(redWidget.sliceView(), start=middle, end=middle, steps=1)
        index = widget.logic.segmenter.view_slice_index(redWidget.mrmlSliceNode())
        voxels = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)
        self.assertEqual(sorted(set(np.nonzero(voxels)[0])), [index])
        return index


def _randomTinyModel():
    """SAM 2.1 tiny with random weights whose decoder always answers "present, non-empty", so
    the test sees where results land."""
    import torch

    from samed2.model import build_model

    model = build_model("sam2.1-hiera-tiny")
    with torch.no_grad():
        decoder = model.sam_mask_decoder
        head = decoder.pred_obj_score_head
        (head if isinstance(head, torch.nn.Linear) else head.layers[-1]).bias += 30.0
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].bias += 0.3
    return model
