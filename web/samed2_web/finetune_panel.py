"""The page's "Fine-tune on my corrections" panel: page events to SAMed2SlicerLib.finetune and back.

The training runs in its own process (the page stays responsive, segmenting included); when it ends
well the new model is registered, listed and selected. The segmentation is only read.
"""
from trame.widgets import html
from trame_vuetify.widgets import vuetify3 as v3

from SAMed2SlicerLib import finetune


class FinetunePanel:
    def __init__(self, app):
        self.app = app
        self.job = None

    def build(self):
        v3.VListSubheader("Fine-tune")
        with html.Div(classes="px-2"):
            v3.VTextField(v_model=("finetune_name",), label="New model name", density="compact", hide_details=True,
                          classes="finetune-name mb-1")
            v3.VCheckbox(v_model=("finetune_replace",), label="Replace a model of that name", density="compact",
                         hide_details=True, classes="finetune-replace")
            html.Div("Trains the chosen model on the slices of the selected segment you prompted or corrected "
                     "(along the view you last prompted in), then selects it. The segmentation is not changed.",
                     classes="text-caption")
            v3.VBtn("Fine-tune on my corrections", click=self.start, disabled=("finetune_busy",),
                    classes="finetune mr-2")
            v3.VBtn("Cancel", click=self.cancel, disabled=("!finetune_busy",), classes="finetune-cancel")
            v3.VProgressLinear(model_value=("finetune_progress",), v_show=("finetune_busy",),
                               classes="finetune-progress mt-2")

    def start(self):
        app, name = self.app, (self.app.state.finetune_name or "").strip()
        if app._prompted_view is None:
            app._report(error="Prompt or correct the object on a few slices first: fine-tuning learns from them.")
            return
        if not name:
            app._report(error="Give the new model a name.")
            return
        self.job = app._guarded(finetune.start, app.logic, app.volume, app.segmentation, app.state.segment_id,
                                app._prompted_view, name, bool(app.state.finetune_replace), self._on_progress,
                                self._on_end)
        if self.job is None:
            return
        app._report(f"Fine-tuning {app.logic.model_name()} into {name}...")
        with app.state:
            app.state.finetune_busy = True
            app.state.finetune_progress = 0
        app._poll_jobs()

    def cancel(self):
        if self.job is not None and not self.job.finished:
            self.job.cancel()

    def _on_progress(self, job, progress):
        with self.app.state:
            self.app.state.finetune_progress = round(100 * (progress.fraction or 0))

    def _on_end(self, job):
        app = self.app
        with app.state:
            app.state.finetune_busy = False
        if job.cancelled:
            app._report("Fine-tuning cancelled: no model was registered.")
        elif job.error is not None:
            app._report(error=f"Fine-tuning failed: {job.error}")
        else:
            app._list_models()
            with app.state:
                app.state.model = job.result
            app._report(f"Fine-tuned: segmenting with {job.result} from the next prompt.")
