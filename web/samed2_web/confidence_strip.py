"""The confidence strip under the views: one cell per slice along the propagated axis, coloured by
the engine's confidence in the segment there (SAMed2SlicerLib.confidence), and a button that shows
the least confident slice in the view propagation ran across."""
from trame.widgets import html
from trame_vuetify.widgets import vuetify3 as v3

from SAMed2SlicerLib.confidence import least_confident, strip_cells

TITLE = "c.confidence === null ? `slice ${c.slice}: no result` : `slice ${c.slice}: ${c.confidence.toFixed(2)}`"
CELL_STYLE = ("{flex: '1 1 0', height: '14px', marginRight: '1px', background: strip_colours[c.level], "
              "outline: c.slice === strip_current ? '2px solid white' : 'none'}")


class ConfidenceStrip:
    """Page state `strip` (the cells) and `strip_current` (the slice the button went to)."""

    def __init__(self, app):
        self.app = app

    def _segmenter_and_axis(self):
        segmenter, view = self.app.logic.segmenter, self.app._prompted_view
        if segmenter is None or view is None:
            return None, None
        return segmenter, segmenter.axis_of_view(view)

    def update(self):
        """Read the selected segment's confidences again (after prompts and propagation)."""
        segmenter, axis = self._segmenter_and_axis()
        confidences = {} if segmenter is None else segmenter.confidences(self.app.state.segment_id, axis)
        with self.app.state:
            self.app.state.strip = strip_cells(confidences, segmenter.volume.num_slices(axis)) if confidences else []

    def go_to_least_confident(self):
        segmenter, axis = self._segmenter_and_axis()
        confidences = {} if segmenter is None else segmenter.confidences(self.app.state.segment_id, axis)
        index = least_confident(confidences)
        if index is None:
            self.app._report(error="No slice has a result yet: prompt and propagate first.")
            return
        segmenter.show_slice(self.app._prompted_view, index)
        with self.app.state:
            self.app.state.strip_current = index
        self.app._report(f"Least confident slice: {'ijk'[axis]} = {index} (confidence {confidences[index]:.2f}).")

    def build(self):
        """The strip's widgets (inside the page's layout)."""
        with html.Div(v_show=("strip.length",), classes="confidence-strip d-flex align-center px-3 py-1"):
            html.Span("Confidence per slice", classes="text-caption mr-2")
            with html.Div(style="display: flex; flex: 1; align-items: center;"):
                html.Div(v_for="c in strip", key="c.slice", classes="strip-cell", style=(CELL_STYLE,),
                         title=(TITLE,))
            v3.VBtn("Least confident slice", click=self.go_to_least_confident, disabled=("busy",), size="small",
                    variant="tonal", classes="least-confident ml-2")
