"""The confidence strip under the views: one cell per slice along the propagated axis, coloured by
the engine's confidence in the segment there (SAMed2SlicerLib.confidence), and a button that shows
the least confident slice in the view propagation ran across."""
from trame.widgets import html
from trame_vuetify.widgets import vuetify3 as v3

from SAMed2SlicerLib.confidence import strip_cells

TITLE = "c.confidence === null ? `slice ${c.slice}: no result` : `slice ${c.slice}: ${c.confidence.toFixed(2)}`"
CELL_STYLE = ("{flex: '1 1 0', height: '14px', marginRight: '1px', background: strip_colours[c.level], "
              "outline: c.slice === strip_current ? '2px solid white' : 'none'}")


class ConfidenceStrip:
    """Page state `strip` (the cells) and `strip_current` (the slice the button went to)."""

    def __init__(self, app):
        self.app = app

    def _target(self):
        """The page's volume, segmentation, selected segment and the view propagation ran across."""
        return self.app.volume, self.app.segmentation, self.app.state.segment_id, self.app._prompted_view

    def update(self):
        """Read the selected segment's confidences again (after prompts and propagation)."""
        confidences, num_slices = self.app.interaction.confidences(*self._target())
        with self.app.state:
            self.app.state.strip = strip_cells(confidences, num_slices) if confidences else []

    def go_to_least_confident(self):
        index = self.app.interaction.show_least_confident(*self._target())
        if index is not None:
            with self.app.state:
                self.app.state.strip_current = index

    def build(self):
        """The strip's widgets (inside the page's layout)."""
        with html.Div(v_show=("strip.length",), classes="confidence-strip d-flex align-center px-3 py-1"):
            html.Span("Confidence per slice", classes="text-caption mr-2")
            with html.Div(style="display: flex; flex: 1; align-items: center;"):
                html.Div(v_for="c in strip", key="c.slice", classes="strip-cell", style=(CELL_STYLE,),
                         title=(TITLE,))
            v3.VBtn("Least confident slice", click=self.go_to_least_confident, disabled=("busy",), size="small",
                    variant="tonal", classes="least-confident ml-2")
