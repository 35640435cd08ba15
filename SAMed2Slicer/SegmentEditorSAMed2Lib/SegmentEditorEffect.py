"""The "SAMed-2" Segment Editor effect: include points, exclude points and boxes in any slice
view, and propagation, for the selected segment. The SAMed-2 module registers it (at start-up,
or when the module is loaded later), so it works in Slicer's Segment Editor as in the module's
own panel.

Slicer may load this file as the module `SegmentEditorSAMed2Lib` itself (see __init__.py), so
it imports only absolute names.

The effect only turns mouse events into world coordinates and calls the shared Controller;
the geometry, the engine calls and the segment writes are SAMed2SlicerLib's.
"""
import os

import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from samed2.choices import DIRECTIONS, EFFECT_NAME, STOP_AFTER_ABSENT, PropagationOptions
from SAMed2SlicerLib.confidence import strip_html
from SAMed2SlicerLib.interaction import start_tool
from SAMed2SlicerLib.prompts import BOX, COLORS, EXCLUDE, INCLUDE, hovered_prompt
from SAMed2SlicerQt.controller import Controller

EFFECT_SOURCE = os.path.abspath(__file__).replace("\\", "/")
MODULE_DIR = os.path.dirname(os.path.dirname(EFFECT_SOURCE))
DEFAULT_VIEW = "Red"
DEFAULTS = (("Tool", INCLUDE), ("Direction", DIRECTIONS[0]), ("FirstSlice", -1), ("LastSlice", -1),
            ("StopAfterAbsent", STOP_AFTER_ABSENT), ("AllSegments", 0))


class BoxDrag:
    """The rubber band shown in a slice view while a box is dragged."""

    def __init__(self, scripted_effect, view_widget, start_xy, start_ras):
        self.effect, self.view, self.start_xy, self.start_ras = scripted_effect, view_widget, start_xy, start_ras
        self.points = vtk.vtkPoints()
        for _ in range(4):
            self.points.InsertNextPoint(start_xy[0], start_xy[1], 0.0)
        outline = vtk.vtkCellArray()
        outline.InsertNextCell(5)
        for corner in (0, 1, 2, 3, 0):
            outline.InsertCellPoint(corner)
        polydata = vtk.vtkPolyData()
        polydata.SetPoints(self.points)
        polydata.SetLines(outline)
        mapper = vtk.vtkPolyDataMapper2D()
        mapper.SetInputData(polydata)
        self.actor = vtk.vtkActor2D()
        self.actor.SetMapper(mapper)
        self.actor.GetProperty().SetColor(*COLORS[BOX])
        self.actor.GetProperty().SetLineWidth(2)
        self.effect.addActor2D(view_widget, self.actor)

    def update(self, xy):
        (x0, y0), (x1, y1) = self.start_xy, xy
        for corner, (x, y) in enumerate(((x0, y0), (x1, y0), (x1, y1), (x0, y1))):
            self.points.SetPoint(corner, x, y, 0.0)
        self.points.Modified()
        self.effect.forceRender(self.view)

    def remove(self):
        self.effect.removeActor2D(self.view, self.actor)
        self.effect.forceRender(self.view)


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """SAMed-2 prompts and propagation for the selected segment."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = EFFECT_NAME
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.ui = None
        self._drag = None
        self._prompt_view = None  # slice node of the last prompt: propagation follows its slices

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        cloned = effects.qSlicerSegmentEditorScriptedEffect(None)
        cloned.setPythonSource(EFFECT_SOURCE)
        return cloned

    def icon(self):
        return qt.QIcon(os.path.join(MODULE_DIR, "Resources", "Icons", "SegmentEditorSAMed2.png"))

    def helpText(self):
        return ("<html>Segment with SAMed-2 / SAM 2: click on the object (include point), click where the result "
                "leaks (exclude point), or drag a box around it, in any slice view. The selected segment's slice is "
                "updated at each prompt; prompts are markups you can drag (press on a point, or on a box's outline or "
                "handles: a click at a box's centre adds a point) or delete. Then propagate through the volume, "
                "correct slices and propagate again. Results follow the Masking settings below (editable area, "
                "intensity range, modify other segments), as Paint does.</html>")

    # ---- options panel -------------------------------------------------------------------

    def setupOptionsFrame(self):
        panel = slicer.util.loadUI(os.path.join(MODULE_DIR, "Resources", "UI", "SegmentEditorSAMed2.ui"))
        self.ui = slicer.util.childWidgetVariables(panel)
        self.scriptedEffect.addOptionsWidget(panel)
        for tool, button in self._tool_buttons().items():
            button.connect("clicked()", lambda tool=tool: self._set_tool(tool))
        self.ui.directionComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        for spin_box in (self.ui.firstSliceSpinBox, self.ui.lastSliceSpinBox, self.ui.stopAfterAbsentSpinBox):
            spin_box.connect("valueChanged(int)", self.updateMRMLFromGUI)
        self.ui.allSegmentsCheckBox.connect("toggled(bool)", self.updateMRMLFromGUI)
        self.ui.firstSliceFromViewButton.connect("clicked()", lambda: self._slice_from_view(self.ui.firstSliceSpinBox))
        self.ui.lastSliceFromViewButton.connect("clicked()", lambda: self._slice_from_view(self.ui.lastSliceSpinBox))
        self.ui.propagateButton.connect("clicked()", self.onPropagate)
        self.ui.cancelButton.connect("clicked()", self.onCancel)
        self.ui.leastConfidentButton.connect("clicked()", self.onLeastConfident)

    def _tool_buttons(self):
        return {INCLUDE: self.ui.includeButton, EXCLUDE: self.ui.excludeButton, BOX: self.ui.boxButton}

    def _set_tool(self, tool):
        self.scriptedEffect.setParameter("Tool", tool)

    def _suit_tool_to(self, model):
        """A model trained on boxes only starts with the Box tool: a click alone gives it nothing."""
        if start_tool(model) == BOX:
            self._set_tool(BOX)

    def setMRMLDefaults(self):
        for name, value in DEFAULTS:
            self.scriptedEffect.setParameterDefault(name, value)

    def updateGUIFromMRML(self):
        if self.ui is None:
            return
        parameter = self.scriptedEffect
        for tool, button in self._tool_buttons().items():
            button.checked = parameter.parameter("Tool") == tool
        widgets = [self.ui.directionComboBox, self.ui.firstSliceSpinBox, self.ui.lastSliceSpinBox,
                   self.ui.stopAfterAbsentSpinBox, self.ui.allSegmentsCheckBox]
        blocked = [widget.blockSignals(True) for widget in widgets]
        self.ui.directionComboBox.currentText = parameter.parameter("Direction")
        self.ui.firstSliceSpinBox.value = parameter.integerParameter("FirstSlice")
        self.ui.lastSliceSpinBox.value = parameter.integerParameter("LastSlice")
        self.ui.stopAfterAbsentSpinBox.value = parameter.integerParameter("StopAfterAbsent")
        self.ui.allSegmentsCheckBox.checked = bool(parameter.integerParameter("AllSegments"))
        for widget, was_blocked in zip(widgets, blocked):
            widget.blockSignals(was_blocked)

    def updateMRMLFromGUI(self, *unused):
        parameter = self.scriptedEffect
        parameter.setParameter("Direction", self.ui.directionComboBox.currentText)
        parameter.setParameter("FirstSlice", self.ui.firstSliceSpinBox.value)
        parameter.setParameter("LastSlice", self.ui.lastSliceSpinBox.value)
        parameter.setParameter("StopAfterAbsent", self.ui.stopAfterAbsentSpinBox.value)
        parameter.setParameter("AllSegments", int(self.ui.allSegmentsCheckBox.checked))

    def activate(self):
        """Messages come here, prompts moved meanwhile save their undo state in this editor, the
        model starts loading in the background, and the tool suits the model once it is loaded."""
        interaction = Controller.get().interaction
        interaction.listeners.append(self._show)
        interaction.model_listeners.append(self._suit_tool_to)
        interaction.editor_activated(self._save_state_for_undo)
        if interaction.logic.model_ready():
            self._suit_tool_to(interaction.logic.engine_model())
        interaction.preload()

    def deactivate(self):
        interaction = Controller.get().interaction
        if self._show in interaction.listeners:
            interaction.listeners.remove(self._show)
        if self._suit_tool_to in interaction.model_listeners:
            interaction.model_listeners.remove(self._suit_tool_to)
        interaction.editor_deactivated(self._save_state_for_undo)
        self._end_drag()

    def cleanup(self):
        """The editor is being deleted (Slicer 5.10 and later call this; earlier ones never do)."""
        if Controller.existing() is not None:
            self.deactivate()
        if self.ui is not None:
            self.ui.cancelButton.disconnect("clicked()", self.onCancel)
            self.ui = None

    def _save_state_for_undo(self):
        """This editor's undo history (bound methods of one effect compare equal)."""
        self.scriptedEffect.saveStateForUndo()

    def onCancel(self):
        Controller.get().cancel()

    def _show(self, message, progress=None):
        if self.ui is None:
            return
        self.ui.statusLabel.text = message
        running = Controller.get().interaction.running
        self.ui.propagateButton.enabled = not running
        self.ui.cancelButton.enabled = running
        if progress is not None:
            self.ui.propagationProgressBar.value = int(round(100 * (progress.fraction or 0)))
        if not running:  # the slices of a run are counted when it ends, as on the web page
            self._draw_strip()

    def _draw_strip(self):
        """The selected segment's confidence per slice along the propagation view's slices (empty before results)."""
        confidences, num_slices = Controller.get().interaction.confidences(*self._nodes(),
                                                                           self._propagation_view(quiet=True))
        self.ui.confidenceStripLabel.text = strip_html(confidences, num_slices)

    # ---- mouse in slice views --------------------------------------------------------------

    def _nodes(self):
        parameters = self.scriptedEffect.parameterSetNode()
        return parameters.GetSourceVolumeNode(), parameters.GetSegmentationNode(), parameters.GetSelectedSegmentID()

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        xy = callerInteractor.GetEventPosition()
        if eventId == vtk.vtkCommand.LeftButtonPressEvent:
            return self._press(callerInteractor, xy, viewWidget)
        if self._drag is not None and eventId == vtk.vtkCommand.MouseMoveEvent:
            self._drag.update(xy)
            return True
        if self._drag is not None and eventId == vtk.vtkCommand.LeftButtonReleaseEvent:
            self._release(xy)
            return True
        return False

    def _press(self, interactor, xy, view_widget):
        """A left press makes a prompt, except with a modifier key (left to the view, as
        Slicer's Draw effect does) or over a prompt's point, box outline or handle (Markups
        drags it)."""
        self._end_drag()  # a release outside the view never came
        volume, segmentation, segment_id = self._nodes()
        if interactor.GetShiftKey() or interactor.GetControlKey() or interactor.GetAltKey():
            return False
        if segmentation is not None and hovered_prompt(segmentation) is not None:
            return False
        if not segment_id:
            self._show("Select (or add) a segment first: each object is one segment.")
            return True
        if self.scriptedEffect.confirmCurrentSegmentVisible() in (self.scriptedEffect.NotConfirmed,
                                                                  self.scriptedEffect.ConfirmedWithDialog):
            return True  # as Slicer's Draw effect: after the dialog the press is spent; the next one prompts
        point = self.xyToRas(xy, view_widget)
        self._prompt_view = view_widget.mrmlSliceNode()
        tool = self.scriptedEffect.parameter("Tool")
        if tool == BOX:
            self._drag = BoxDrag(self.scriptedEffect, view_widget, xy, point)
            return True
        positive = tool == INCLUDE
        Controller.get().click(volume, segmentation, segment_id, self._prompt_view, point, positive,
                               self._save_state_for_undo)
        return True

    def _release(self, xy):
        drag = self._drag
        self._end_drag()
        volume, segmentation, segment_id = self._nodes()
        Controller.get().box(volume, segmentation, segment_id, drag.view.mrmlSliceNode(), drag.start_ras,
                             self.xyToRas(xy, drag.view), self._save_state_for_undo)

    def _end_drag(self):
        if self._drag is not None:
            self._drag.remove()
            self._drag = None

    def processViewNodeEvents(self, callerViewNode, eventId, viewWidget):
        volume, segmentation, _ = self._nodes()
        if callerViewNode is not None and callerViewNode.IsA("vtkMRMLSliceNode") and volume and segmentation:
            Controller.get().view_changed(volume, segmentation, callerViewNode)

    # ---- propagation -----------------------------------------------------------------------

    def _propagation_view(self, quiet=False):
        """The slice view of the last prompt, else the Red view; None (said unless `quiet`) when the
        layout has none or there is no layout (no main window)."""
        if self._prompt_view is not None:
            return self._prompt_view
        layout = slicer.app.layoutManager()
        widget = None if layout is None else layout.sliceWidget(DEFAULT_VIEW)
        if widget is None:
            if not quiet:
                self._show(f"No {DEFAULT_VIEW} slice view in this layout: prompt in a slice view first, propagation "
                           "then follows that view's slices.")
            return None
        return widget.mrmlSliceNode()

    def _slice_from_view(self, spin_box):
        """The slice the propagation view shows, from the geometry (no model needed)."""
        volume, _, _ = self._nodes()
        view = self._propagation_view()
        if view is None:
            return
        if volume is None:
            self._show("Select the source volume first.")
            return
        with Controller.get().reporting("Reading the view's slice"):
            spin_box.value = Controller.get().logic.view_slice_index(volume, view)

    def onPropagate(self):
        volume, segmentation, segment_id = self._nodes()
        if not segment_id:
            self._show("Select the segment to propagate first.")
            return
        first, last = self.ui.firstSliceSpinBox.value, self.ui.lastSliceSpinBox.value
        options = PropagationOptions(self.ui.directionComboBox.currentText, start=None if first < 0 else first,
                                     stop=None if last < 0 else last,
                                     stop_after_absent=self.ui.stopAfterAbsentSpinBox.value)
        segment_ids = None if self.ui.allSegmentsCheckBox.checked else [segment_id]
        view = self._propagation_view()
        if view is not None:
            Controller.get().propagate(volume, segmentation, segment_ids, view, options, self._save_state_for_undo)

    def onLeastConfident(self):
        volume, segmentation, segment_id = self._nodes()
        view = self._propagation_view()
        if view is not None:
            Controller.get().interaction.show_least_confident(volume, segmentation, segment_id, view)
