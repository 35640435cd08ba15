"""The page's layout: the toolbar, the drawer's panels (segments, propagation, model, fine-tune),
the lines above the views, the confidence strip and the slice views. Widgets only: what a button
does is a callback of PageActions, the names bound are samed2_web.state.PageState's."""
from collections.abc import Callable
from dataclasses import dataclass

from trame.widgets import html
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition
from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout
from trame_vuetify.widgets import vuetify3 as v3

from samed2.choices import PROMPT_TOOLS

# Export kind (the Logic's), button label, button class (what tests find it by)
EXPORTS = (("NIfTI", "Save NIfTI", "save-nifti"), ("DICOM-SEG", "Save DICOM-SEG", "save-dicom-seg"),
           ("Slicer segmentation", "Save .seg.nrrd", "save-seg-nrrd"))
VIEW_LAYOUTS = {"Axial": Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.axial_view()]),
                "Axial, coronal, sagittal": Layout(LayoutDirection.Horizontal, [
                    ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.coronal_view(),
                    ViewLayoutDefinition.sagittal_view()])}
SWATCH_STYLE = "{display: 'inline-block', width: '12px', height: '12px', marginRight: '8px', background: s.color}"


@dataclass(frozen=True)
class PageActions:
    """What the page's buttons and menus call."""
    undo: Callable[[], None]
    export: Callable[[str], None]  # an export kind
    add_segment: Callable[[], None]
    propagate: Callable[[], None]
    cancel: Callable[[], None]
    list_models: Callable[..., None]  # when the model menu opens
    save_to_pacs: Callable[[], None] | None = None  # None: the series is not from a PACS (no button)


def build_page(server, actions: PageActions, layout_manager, strip, finetune) -> SinglePageWithDrawerLayout:
    """The page; `strip` and `finetune` are the confidence strip and fine-tune panel (each builds its own
    widgets), `layout_manager` fills the views' area."""
    with SinglePageWithDrawerLayout(server, full_height=True, width=320) as page:
        page.title.set_text("SAMed-2")
        with page.toolbar:
            _toolbar(actions)
        with page.drawer:
            _segments_panel(actions)
            _propagation_panel(actions)
            _model_panel(actions)
            finetune.build()
        with page.content, html.Div(style="display: flex; flex-direction: column; height: 100%;"):
            with html.Div(style="padding: 4px 12px;"):
                html.Div("{{ title }}", classes="volume-title text-caption")
                html.Div("{{ status }}", classes="status")
                html.Div("{{ error }}", classes="error text-red", v_show=("error",))
                html.Div("{{ probe }}", classes="probe text-caption")
            strip.build()
            with html.Div(style="flex: 1; position: relative;"):
                layout_manager.initialize_layout_grid(page)
    return page


def _toolbar(actions: PageActions):
    v3.VSpacer()
    with v3.VBtnToggle(v_model=("mode",), mandatory=True, density="compact"):
        for mode in PROMPT_TOOLS:  # a box is two clicks: opposite corners
            v3.VBtn(mode.capitalize(), value=mode, classes=f"{mode}-mode")
    v3.VBtn("Undo", click=actions.undo, disabled=("busy",), classes="undo ml-2")
    v3.VSelect(v_model=("view_layout",), items=("view_layouts",), density="compact", hide_details=True,
               style="max-width: 220px", classes="ml-2 view-layout")
    for kind, label, name in EXPORTS:
        v3.VBtn(label, click=(actions.export, f"['{kind}']"), disabled=("busy",), size="small", variant="tonal",
                classes=f"{name} ml-1")
    if actions.save_to_pacs is not None:
        v3.VBtn("Save to PACS", click=actions.save_to_pacs, disabled=("busy",), size="small", variant="tonal",
                classes="save-to-pacs ml-1")


def _segments_panel(actions: PageActions):
    v3.VListSubheader("Segments")
    with v3.VList(density="compact", classes="segments"), \
            v3.VListItem(v_for="s in segments", key="s.id", click="segment_id = s.id",
                         active=("s.id === segment_id",), classes="segment"):
        html.Span(style=(SWATCH_STYLE,), classes="swatch")
        html.Span("{{ s.name }}: {{ s.voxels }} voxels, {{ s.prompts }} prompt(s)", classes="text-body-2")
    with html.Div(classes="d-flex align-center px-2"):
        v3.VTextField(v_model=("segment_name",), label="Name", density="compact", hide_details=True,
                      classes="segment-name")
        html.Input(type="color", v_model=("segment_color",), title="Colour", classes="segment-color ml-2")
        v3.VBtn("Add", click=actions.add_segment, disabled=("busy",), size="small", classes="add-segment ml-2")


def _propagation_panel(actions: PageActions):
    v3.VListSubheader("Propagation")
    with html.Div(classes="px-2"):
        v3.VSelect(v_model=("direction",), items=("directions",), label="Direction", density="compact",
                   hide_details=True, classes="direction mb-2")
        with html.Div(classes="d-flex"):
            for name, label in (("first_slice", "First"), ("last_slice", "Last"), ("stop_after_absent", "Stop after")):
                v3.VTextField(v_model=(name,), label=label, type="number", density="compact", hide_details=True,
                              classes=f"{name.replace('_', '-')} mr-1")
        html.Div("First, Last: slice numbers (empty: the volume's edge). Stop after: slices without the object "
                 "(0: never).", classes="text-caption")
        v3.VBtn("Propagate", click=actions.propagate, disabled=("busy",), classes="propagate mr-2")
        v3.VBtn("Cancel", click=actions.cancel, disabled=("!busy",), classes="cancel")
        v3.VProgressLinear(model_value=("progress",), v_show=("busy",), classes="progress mt-2")


def _model_panel(actions: PageActions):
    v3.VListSubheader("Model")
    with html.Div(classes="px-2"):
        v3.VSelect(v_model=("model",), items=("models",), label="Model", density="compact", hide_details=True,
                   disabled=("busy",), update_menu=actions.list_models, classes="model mb-2")
        for name, items in (("device", "devices"), ("preset", "presets"), ("backend", "backends")):
            v3.VSelect(v_model=(name,), items=(items,), label=name.capitalize(), density="compact",
                       hide_details=True, disabled=("busy",), classes=f"{name} mb-2")
