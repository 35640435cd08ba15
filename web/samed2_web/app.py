"""The browser front end: trame-slicer's remote slice views over one MRML scene, driven by the
Slicer module's Logic (SAMed2SlicerLib.logic.SAMed2Logic) through the interaction layer the Slicer
module uses too (SAMed2SlicerLib.interaction: model loading, the propagation run and job polling,
prompt watching, undo, the messages). This file only turns page events into its calls and its
messages into page state; the page's layout is samed2_web.ui, the names and defaults of its state
samed2_web.state.

One server process serves one user session (one scene, one volume, one segmentation).
"""
import asyncio
import os
from pathlib import Path

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # offscreen, no X

import slicer
from trame.app import TrameApp
from trame.decorators import change
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from vtkmodules.vtkCommonCore import vtkCommand
from vtkmodules.vtkCommonMath import vtkMatrix4x4

from samed2.choices import DEVICES
from samed2.errors import InputError, Samed2Error
from samed2.weights import cached_checkpoint, list_weights
from samed2_web.confidence_strip import ConfidenceStrip
from samed2_web.finetune_panel import FinetunePanel
from samed2_web.state import PageState, hex_color, propagation_options, publish, rgb_color
from samed2_web.ui import VIEW_LAYOUTS, PageActions, build_page
from SAMed2SlicerLib.interaction import Interaction, start_tool
from SAMed2SlicerLib.logic import SAMed2Logic
from SAMed2SlicerLib.prompts import SEGMENT, hovered_prompt, prompt_nodes
from SAMed2SlicerLib.segments import read_segment

FIRST_SEGMENT_COLOR = (0.87, 0.51, 0.40)  # Slicer's liver colour: a hue the grey CT never has
JOB_TICK_S = 0.01  # pause between job polls; each poll itself waits up to the Logic's TICK_WAIT_S
MARKUP_SETTLE_S = 0.3  # a prompt changed by a script is applied once its changes have settled


def image_files(image: Path) -> list:
    """The files to load: a volume file, or every file of a DICOM series folder."""
    if image.is_dir():
        files = sorted(str(p) for p in image.iterdir() if p.is_file())
        if not files:
            raise Samed2Error(f"{image} is an empty folder: give a volume file or a DICOM series folder")
        return files
    if not image.is_file():
        raise Samed2Error(f"no such image: {image}")
    return [str(image)]


def cached_models(cache_dir) -> list:
    """The models whose weights are in the cache (the only ones the page offers)."""
    return [status.name for status in list_weights(cache_dir) if status.state == "cached"]


def available_devices() -> list:
    import torch

    present = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    return [name for name in DEVICES if present.get(name, True)]


def volume_title(node_name, image: Path) -> str:
    """What the page calls the volume: the series description (DICOM loaders name a series
    "<number>: <description>", with "None" for a missing number), else the file or folder name."""
    name = (node_name or "").strip().removeprefix("None: ")
    return name if name and name != "None" else image.name


def expose_scene(slicer_app: SlicerApp) -> None:
    """The Logic reaches the scene through `slicer.mrmlScene`, as inside Slicer."""
    slicer.mrmlScene = slicer_app.scene


class SAMed2WebApp(TrameApp):
    def __init__(self, image, output_dir, cache_dir, model=None, device="auto", server=None, pacs=None):
        super().__init__(server=server)
        self.image = Path(image)
        self.pacs = pacs  # samed2_web.pacs.Pacs when the series came from a DICOMweb server
        self.output_dir = Path(output_dir)
        self.slicer_app = SlicerApp()
        expose_scene(self.slicer_app)
        self.logic = SAMed2Logic(cache_dir=cache_dir)
        self.logic.configure(device=device, model=model or self.logic.model_name())
        cached_checkpoint(self.logic.settings.model, cache_dir)  # a missing model stops the start (WeightsError)
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict(VIEW_LAYOUTS)
        self.layout_manager.set_layout(PageState.view_layout)

        volumes = self.slicer_app.io_manager.load_volumes(image_files(self.image))
        if not volumes:
            raise Samed2Error(f"cannot read a volume from {self.image}")
        self.volume = volumes[0]
        self.slicer_app.display_manager.show_volume(self.volume, do_reset_views=True)
        self.segmentation = self._new_segmentation()
        self._observed = []
        self._prompted_view = None
        self._box_corner = None  # (slice node, RAS) of a box's first click
        self._jobs_task = None
        self._settling = None  # the pending apply of prompts a script changed
        # The page's user runs the server from the command line: its commands stay in messages.
        self.interaction = Interaction(self.logic, show_error=self._show_error, settle=self._settle,
                                       poll=self._poll_jobs, gui=False)
        self.interaction.listeners.append(self._show_status)
        self.strip = ConfidenceStrip(self)
        self.finetune = FinetunePanel(self)
        self._init_state()
        self.ui = build_page(self.server, self._actions(), self.layout_manager, self.strip, self.finetune)
        self.server.controller.on_server_ready.add(self._on_server_ready)

    # ---- scene -----------------------------------------------------------------------------

    def _new_segmentation(self):
        segmentation = self.slicer_app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(self.volume)
        segmentation.GetSegmentation().AddEmptySegment("segment_1", "Segment 1", FIRST_SEGMENT_COLOR)
        return segmentation

    def segment_ids(self):
        segmentation = self.segmentation.GetSegmentation()
        return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]

    def segment(self, segment_id=None):
        """The selected segment (or `segment_id`'s) in MRML."""
        return self.segmentation.GetSegmentation().GetSegment(segment_id or self.state.segment_id)

    def segment_voxels(self, segment_id) -> int:
        """Voxels of a segment as MRML holds them (what the page's segment list shows)."""
        return int(read_segment(self.segmentation, segment_id, self.volume).sum())

    def add_segment(self):
        segmentation = self.segmentation.GetSegmentation()
        number = segmentation.GetNumberOfSegments() + 1
        segment_id = segmentation.AddEmptySegment(f"segment_{number}", f"Segment {number}")
        with self.state:
            self.state.segment_id = segment_id
        self._report(f"Added Segment {number}: click on its object.")

    def _segment_rows(self):
        return [{"id": sid, "name": self.segment(sid).GetName(), "color": hex_color(self.segment(sid).GetColor()),
                 "voxels": self.segment_voxels(sid), "prompts": self.prompt_count(sid)} for sid in self.segment_ids()]

    def prompt_count(self, segment_id) -> int:
        """Points and boxes of a segment (a box is an ROI with one control point, its centre)."""
        return sum(node.GetNumberOfControlPoints() for node in prompt_nodes(self.segmentation, segment_id))

    @change("segment_id")
    def _on_segment_selected(self, segment_id, **_):
        with self.state:
            self.state.segment_name = self.segment(segment_id).GetName()
            self.state.segment_color = hex_color(self.segment(segment_id).GetColor())

    @change("segment_name")
    def _on_segment_renamed(self, segment_name, **_):
        name = (segment_name or "").strip()
        if name and name != self.segment().GetName():  # an emptied field keeps the name until typed
            self.segment().SetName(name)
            self._report(f"Renamed the segment to {name}.")

    @change("segment_color")
    def _on_segment_coloured(self, segment_color, **_):
        if segment_color and segment_color != hex_color(self.segment().GetColor()):
            self.segment().SetColor(*rgb_color(segment_color))
            self._report(f"{self.segment().GetName()} is now drawn in {segment_color}.")

    # ---- page state ------------------------------------------------------------------------

    def _init_state(self):
        first, settings = self.segment_ids()[0], self.logic.settings
        page = PageState(title=self._title(), segments=self._segment_rows(), segment_id=first,
                         segment_name=self.segment(first).GetName(),
                         segment_color=hex_color(self.segment(first).GetColor()),
                         model=self.logic.model_name(), models=cached_models(self.logic.cache_dir),
                         device=settings.device, devices=available_devices(), preset=settings.preset,
                         backend=settings.backend, view_layouts=list(VIEW_LAYOUTS))
        publish(self.state, **vars(page))

    def _actions(self) -> PageActions:
        return PageActions(undo=self.undo, export=self.export, add_segment=self.add_segment,
                           propagate=self.propagate, cancel=self.cancel, list_models=self._list_models,
                           save_to_pacs=None if self.pacs is None else self.save_to_pacs)

    def _report(self, status="", error=""):
        with self.state:
            self.state.status = status
            self.state.error = error
            self.state.segments = self._segment_rows()
        self.strip.update()

    def _show_status(self, message, progress=None):
        """The interaction layer's status line; the segment list and the confidence strip are read
        again unless a run is going on (its slices are counted when it ends)."""
        with self.state:
            self.state.status = message
            self.state.busy = self.interaction.running
            if progress is not None:
                self.state.progress = round(100 * (progress.fraction or 0))
            if not self.state.busy:
                self.state.segments = self._segment_rows()
        if not self.state.busy:
            self.strip.update()

    def _show_error(self, text, error=None):
        with self.state:
            self.state.error = text
            self.state.busy = self.interaction.running
            self.state.segments = self._segment_rows()

    def _guarded(self, action, *args, **kwargs):
        """Run a Logic call; its error becomes the page's message, the scene stays as it was."""
        try:
            return action(*args, **kwargs)
        except (Samed2Error, ValueError, RuntimeError) as error:
            self._report(error=str(error))
            return None

    @change("view_layout")
    def _on_layout(self, view_layout, **_):
        self.layout_manager.set_layout(view_layout)
        self._observe_views()

    # ---- model, device, preset -------------------------------------------------------------

    @change("model", "device", "preset", "backend")
    def _on_settings(self, model, device, preset, backend, **_):
        chosen = {"model": model, "device": device, "preset": preset, "backend": backend}
        previous = {name: getattr(self.logic.settings, name) for name in chosen}
        if chosen == previous:
            return
        self._clear_error()

        def keep_previous():  # the message said why; the previous settings stay
            self.logic.configure(**previous)
            with self.state:
                publish(self.state, **previous)
            self._list_models()
            self.interaction.load_model()

        try:
            self.logic.configure(**chosen)
        except InputError as error:  # a value the page does not offer, set by a script
            self._report(error=str(error))
            with self.state:
                publish(self.state, **previous)
            return
        self.interaction.load_model(then=self._on_model_ready, failed=keep_previous)

    def _on_model_ready(self):
        """The settings in use (the latest choice: changes made while a model loads queue up), and
        the prompt tool that suits the model (Box for a box-only model)."""
        settings = self.logic.settings
        with self.state:
            self.state.mode = start_tool(self.logic.engine_model())
            self.state.title = self._title()
        self._report(f"Segmenting with {self.logic.model_name()} on {settings.device}, preset "
                     f"{settings.preset}: the next prompt uses them.")

    def _list_models(self, *_):
        """The cached models, read again whenever the model menu opens."""
        with self.state:
            self.state.models = cached_models(self.logic.cache_dir)

    def _on_first_load(self):
        with self.state:
            self.state.mode = start_tool(self.logic.engine_model())

    def _title(self) -> str:
        return f"{volume_title(self.volume.GetName(), self.image)}, segmented with {self.logic.model_name()}"

    def _clear_error(self):
        with self.state:
            self.state.error = ""

    # ---- clicks in the slice views -----------------------------------------------------------

    def _on_server_ready(self, **_):
        self._observe_views()
        self.interaction.load_model(then=self._on_first_load)  # in the background ("Loading model ...")

    def _observe_views(self):
        for view in self.slicer_app.view_manager.get_slice_views():
            if view in self._observed:
                continue
            self._observe_press(view)
            view.interactor().AddObserver(vtkCommand.MouseMoveEvent, lambda caller, event, v=view: self._on_move(v),
                                          1.0)
            self._observed.append(view)

    def _observe_press(self, view):
        """Presses reach this observer before the view's interactor style (priority 1 > 0): over a
        prompt of the selected segment the press is left to the Markups displayable manager, which
        drags it; any other press makes a prompt and goes no further (no drag of another segment's
        prompt starts with it)."""
        def on_press(interactor, event):
            if not self._over_selected_prompt():
                self._on_click(view)
                interactor.GetCommand(tag).SetAbortFlag(1)

        tag = view.interactor().AddObserver(vtkCommand.LeftButtonPressEvent, on_press, 1.0)

    def _over_selected_prompt(self) -> bool:
        hovered = hovered_prompt(self.segmentation)
        return hovered is not None and hovered.GetAttribute(SEGMENT) == self.state.segment_id

    def _settle(self, apply_moved_prompts):
        """Apply prompts a script changed once MARKUP_SETTLE_S passed without another change."""
        if self._settling is not None:
            self._settling.cancel()
        self._settling = asyncio.get_event_loop().call_later(MARKUP_SETTLE_S, apply_moved_prompts)

    @staticmethod
    def _event_ras(view):
        x, y = view.interactor().GetEventPosition()
        return view.get_view_node().GetXYToRAS().MultiplyPoint((x, y, 0.0, 1.0))[:3]

    def _on_move(self, view):
        r, a, s = self._event_ras(view)
        with self.state:
            self.state.probe = (f"{view.get_view_node().GetName()} R {r:.1f}  A {a:.1f}  S {s:.1f}"
                                f"{self._voxel((r, a, s))}")

    def _voxel(self, ras) -> str:
        """The voxel under a world point, as slice numbers (what First and Last take), or nothing outside."""
        ras_to_ijk = vtkMatrix4x4()
        self.volume.GetRASToIJKMatrix(ras_to_ijk)
        ijk = [round(c) for c in ras_to_ijk.MultiplyPoint((*ras, 1.0))[:3]]
        inside = all(0 <= c < n for c, n in zip(ijk, self.volume.GetImageData().GetDimensions()))
        return "  (voxel " + ", ".join(f"{axis} {c}" for axis, c in zip("ijk", ijk)) + ")" if inside else ""

    def _on_click(self, view):
        slice_node, point = view.get_view_node(), self._event_ras(view)
        self._prompted_view = slice_node  # propagation runs across this view's slices
        self._clear_error()
        target = (self.volume, self.segmentation, self.state.segment_id, slice_node)
        if self.state.mode != "box":
            self.interaction.click(*target, point, self.state.mode == "include")
        elif self._box_corner is None or self._box_corner[0] is not slice_node:
            self._box_corner = (slice_node, point)
            self._report("Box: now click the opposite corner.")
        else:
            corner, self._box_corner = self._box_corner[1], None
            self.interaction.box(*target, corner, point)

    @change("mode")
    def _on_mode(self, **_):
        self._box_corner = None

    # ---- buttons ---------------------------------------------------------------------------

    def propagate(self):
        self._clear_error()
        options = self._guarded(propagation_options, self.state)
        if options is not None:
            with self.state:
                self.state.progress = 0
            self.interaction.propagate(self.volume, self.segmentation, [self.state.segment_id], self._prompted_view,
                                       options)

    def cancel(self):
        self.interaction.cancel()

    def _poll_jobs(self):
        if self._jobs_task is None or self._jobs_task.done():
            self._jobs_task = asyncio.get_event_loop().create_task(self._tick_jobs())

    async def _tick_jobs(self):
        while self.interaction.tick():
            await asyncio.sleep(JOB_TICK_S)

    def undo(self):
        self._clear_error()
        with self.interaction.reporting("Undo"):
            self.interaction.undo()

    def export(self, kind):
        dicom_folder = self.image if self.image.is_dir() else None
        message = self._guarded(self.logic.export, self.volume, self.segmentation, kind, self._export_path(),
                                dicom_folder)
        if message is not None:
            self._report(message)

    def _export_path(self):
        """Named after the image (a DICOM folder by its whole name: a series fetched from a server is its UID)."""
        name = self.image.name if self.image.is_dir() else self.image.name.split(".")[0]
        return self.output_dir / f"{name}_segmentation"

    def save_to_pacs(self):
        message = self._guarded(self.pacs.save, self.logic, self.volume, self.segmentation, self.image,
                                self._export_path())
        if message is not None:
            self._report(message)
