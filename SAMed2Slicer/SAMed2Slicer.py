"""SAMed-2 module for 3D Slicer: the Qt panel. Logic lives in SAMed2SlicerLib, the engine
in samed2; neither is imported with torch at import time."""
import numpy as np
import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from SAMed2SlicerLib.logic import describe_volume, volume_to_array

HOMEPAGE = "https://github.com/samed2slicer/SAMed2Slicer"


class SAMed2Slicer(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SAMed-2")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SAMed2Slicer contributors (samed2slicer)"]
        self.parent.helpText = _(
            "Interactive segmentation of CT and MRI volumes with SAMed-2 and SAM 2: click or"
            " drag a box on one slice, propagate the result through the volume, correct it"
            " and export it. See the <a href=\"{homepage}\">project page</a>."
        ).format(homepage=HOMEPAGE)
        self.parent.acknowledgementText = _(
            "Uses the models of SAMed-2 (Selective Memory Enhanced Medical Segment Anything"
            " Model) and SAM 2 (Segment Anything in Images and Videos, Meta AI). Both are"
            " reimplemented here; their weights keep their own licences."
        )


class SAMed2SlicerWidget(ScriptedLoadableModuleWidget):
    """The module panel, built from Resources/UI/SAMed2Slicer.ui."""

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        panel = slicer.util.loadUI(self.resourcePath("UI/SAMed2Slicer.ui"))
        self.layout.addWidget(panel)
        self.ui = slicer.util.childWidgetVariables(panel)
        panel.setMRMLScene(slicer.mrmlScene)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)
        self.layout.addStretch(1)
        self.onInputVolumeChanged(self.ui.inputVolumeSelector.currentNode())

    def onInputVolumeChanged(self, volumeNode):
        self.ui.volumeInfoLabel.text = describe_volume(volumeNode)


class SAMed2SlicerTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload and Test, or the Self Tests module)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_volume_to_array_composes_parent_transform()

    def test_volume_to_array_composes_parent_transform(self):
        self.delayDisplay("volume_to_array on a transformed volume")
        voxels = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
        volumeNode = slicer.util.addVolumeFromArray(voxels, np.diag([0.5, 0.75, 2.0, 1.0]))
        transformNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        shift = np.eye(4)
        shift[:3, 3] = [10.0, -5.0, 2.5]
        slicer.util.updateTransformMatrixFromArray(transformNode, shift)
        volumeNode.SetAndObserveTransformNodeID(transformNode.GetID())

        array, ijkToRas = volume_to_array(volumeNode)

        np.testing.assert_array_equal(array, voxels)
        np.testing.assert_allclose(ijkToRas, shift @ np.diag([0.5, 0.75, 2.0, 1.0]))
        self.assertIn("4 x 3 x 2", describe_volume(volumeNode))
        self.delayDisplay("Test passed")
