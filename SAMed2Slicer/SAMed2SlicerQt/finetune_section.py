"""The module panel's "Fine-tune on my corrections" section: Qt widgets to SAMed2SlicerLib.finetune."""
import ctk
import qt
import slicer
from slicer.i18n import tr as _

from SAMed2SlicerLib import finetune
from SAMed2SlicerQt.controller import show_error


class FinetuneSection:
    """A name, a button, Cancel and a progress bar, under the segment editor; `on_registered(name)` runs
    once the new model is in the cache (the logic has selected it)."""

    def __init__(self, layout, logic, controller, editor, on_registered):
        self.logic, self.controller, self.editor, self.on_registered = logic, controller, editor, on_registered
        self.job = None
        box = ctk.ctkCollapsibleButton()
        box.text = _("Fine-tune on my corrections")
        box.collapsed = True
        form = qt.QFormLayout(box)
        self.name = qt.QLineEdit()
        self.name.placeholderText = _("name of the new model")
        form.addRow(_("New model:"), self.name)
        self.button = qt.QPushButton(_("Fine-tune on my corrections"))
        self.button.toolTip = _("Train the chosen model on the slices of the selected segment you prompted or "
                                "corrected, in a separate process, then select it. The segmentation is not changed.")
        self.cancel = qt.QPushButton(_("Cancel"))
        self.cancel.enabled = False
        buttons = qt.QHBoxLayout()
        buttons.addWidget(self.button)
        buttons.addWidget(self.cancel)
        form.addRow(buttons)
        self.progress = qt.QProgressBar()
        self.progress.visible = False
        form.addRow(self.progress)
        layout.addWidget(box)
        self.button.connect("clicked()", self.start)
        self.cancel.connect("clicked()", self.stop)

    def start(self):
        name = self.name.text.strip()
        if not name or not self.controller.ensure_ready():
            return
        with self.controller.reporting(_("Fine-tuning")):
            state = finetune.name_state(name, self.logic.cache_dir)
            replace = state == "taken" and slicer.util.confirmYesNoDisplay(
                _("A model named {name} is already in the weights cache. Replace it?").format(name=name))
            if state == "taken" and not replace:
                return
            segment_id = self.editor.mrmlSegmentEditorNode().GetSelectedSegmentID()
            self.job = finetune.start(self.logic, self.editor.sourceVolumeNode(), self.editor.segmentationNode(),
                                      segment_id, None, name, replace, self.onProgress, self.onEnd)
            self.controller.watch_jobs()
            self.button.enabled, self.cancel.enabled, self.progress.visible = False, True, True
            self.progress.value = 0

    def stop(self):
        if self.job is not None:
            self.job.cancel()

    def onProgress(self, job, progress):
        self.progress.value = int(100 * (progress.fraction or 0))

    def onEnd(self, job):
        self.button.enabled, self.cancel.enabled, self.progress.visible = True, False, False
        if job.error is not None and not job.cancelled:
            show_error(_("Fine-tuning"), job.error)
        elif not job.cancelled:
            self.on_registered(job.result)
