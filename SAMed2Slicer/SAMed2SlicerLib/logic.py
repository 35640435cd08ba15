"""The SAMed-2 module's logic, one owner for all of it: settings, the model, one Segmenter for the
current volume and segmentation, prompts, propagation, warm-up and weights downloads as
background jobs, and export. Scripts drive the module through it
(`slicer.util.getModuleLogic("SAMed2Slicer")` is one); the Qt panel and the Segment Editor effect
only turn Qt events into its calls, and poll `jobs` from a timer.

No Qt, no slicer.app GUI: a web front end can drive it, polling `jobs.tick()` the same way.
"""
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import numpy as np
import slicer
from slicer.util import VTKObservationMixin

from samed2.choices import EXPORT_KINDS, EngineSettings, PropagationOptions
from SAMed2SlicerLib import model_weights
from SAMed2SlicerLib.finetune import FINETUNE_JOB
from SAMed2SlicerLib.geometry import engine_volume, view_axis
from SAMed2SlicerLib.install import InstallPlan
from SAMed2SlicerLib.jobs import BackgroundJob, JobPoller
from SAMed2SlicerLib.prompts import prompt_nodes
from SAMed2SlicerLib.segmenter import Segmenter

LOAD_JOB = "model load"
EXPORT_SUFFIXES = dict(zip(EXPORT_KINDS, (".dcm", ".nii.gz", ".seg.nrrd")))


def written_message(written) -> str:
    """What a prompt wrote, for the status line."""
    slices = [f"{'ijk'[axis]} = {', '.join(map(str, indices))}" for axis, indices in written.items()]
    return "Segmented slice " + "; ".join(slices) if slices else "Nothing changed."


class SAMed2Logic(VTKObservationMixin):
    """Everything the module does, for the volume and segmentation each call names."""

    def __init__(self, cache_dir=None):
        VTKObservationMixin.__init__(self)
        self.settings = EngineSettings()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else model_weights.weights_cache_dir()
        self.jobs = JobPoller()
        self.segmenter: Optional[Segmenter] = None
        self._segmenter_key = None
        self._model = (None, None)  # (name, engine model)
        self.addObserver(slicer.mrmlScene, slicer.vtkMRMLScene.StartCloseEvent, self._on_scene_closing)

    # ---- packages, model and segmenter -----------------------------------------------------

    @staticmethod
    def install_plan(dicom=False) -> InstallPlan:
        """What is missing for segmenting (with `dicom`: and for DICOM-SEG export)."""
        return InstallPlan.for_this_python(dicom=dicom)

    def configure(self, **changes) -> None:
        """Change model, device, preset, precision or backend (an unknown setting or value is an
        InputError naming the valid ones); after a change the next action makes a new segmenter."""
        settings = self.settings.replace(**changes)
        if settings != self.settings:
            self.settings = settings
            self.close_segmenter()

    def use_model(self, name, model) -> None:
        """Segment with an engine model built in Python (scripts, tests) under the name `name`."""
        self._model = (name, model)
        self.configure(model=name)

    def model_name(self) -> str:
        """The model chosen, or the best one cached when none was (model_weights.default_model)."""
        return self.settings.model or model_weights.default_model(self.cache_dir)

    def engine_model(self):
        name = self.model_name()
        if self._model[0] != name:
            self._model = (None, None)
            self._model = (name, model_weights.load(name, self.cache_dir))
        return self._model[1]

    def model_ready(self) -> bool:
        """Whether the chosen model is loaded (a prompt then needs no load first)."""
        return self._model[0] == self.model_name()

    def load_engine(self) -> None:
        """The slow first steps, on any thread: import torch, load the chosen model, and measure
        which precision "auto" runs in on the chosen device (kept for the sessions)."""
        from samed2.device import pick_device, pick_precision

        self.engine_model()
        pick_precision(self.settings.precision, pick_device(self.settings.device))

    def view_slice_index(self, volume_node, slice_node) -> int:
        """The volume slice a slice view shows (through the view's centre), from the geometry
        alone: no model, no packages beyond numpy."""
        volume = engine_volume(volume_node)
        axis = view_axis(volume, slice_node)
        origin = slice_node.GetSliceToRAS().MultiplyPoint((0, 0, 0, 1))[:3]
        index = int(np.floor(volume.to_slice_coords(np.asarray(origin), axis)[0] + 0.5))
        return min(max(index, 0), volume.num_slices(axis) - 1)

    def segmenter_for(self, volume, segmentation) -> Segmenter:
        """The Segmenter for this volume and segmentation with the current settings."""
        if volume is None or segmentation is None:
            raise ValueError("choose a source volume and a segmentation in the segment editor first")
        key = (volume.GetID(), segmentation.GetID(), self.settings)
        if self.segmenter is not None and key == self._segmenter_key:
            return self.segmenter
        if self.install_plan().needed:
            raise RuntimeError("the Python packages SAMed-2 needs are not installed: accept their installation "
                               "when asked (or install them with the PyTorch Utils module and pip)")
        self.close_segmenter()
        from samed2.backends import converted_cache

        settings = self.settings
        self.segmenter = Segmenter(volume, segmentation, self.engine_model(), device=settings.device,
                                   preset=settings.preset, precision=settings.precision, backend=settings.backend,
                                   converted_cache=converted_cache(self.cache_dir))
        self._segmenter_key = key
        self.addObserver(volume, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, self._on_volume_changed)
        return self.segmenter

    def serving(self, volume, segmentation) -> Optional[Segmenter]:
        """The segmenter, if it is this volume's and this segmentation's (without making one)."""
        if self.segmenter is None or volume is None or segmentation is None or \
                self._segmenter_key[:2] != (volume.GetID(), segmentation.GetID()):
            return None
        return self.segmenter

    def close_segmenter(self) -> None:
        """Stop the jobs that use the segmenter and free it (its engine sessions and threads)."""
        if self.segmenter is None:
            return
        self.jobs.cancel(lambda job: job.name not in (model_weights.DOWNLOAD_JOB, LOAD_JOB, FINETUNE_JOB))  # use it
        self.removeObserver(self.segmenter.volume_node, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent,
                            self._on_volume_changed)
        self.segmenter.close()
        self.segmenter = None
        self._segmenter_key = None

    def close(self) -> None:
        """Everything stops (scene closed for good, application quitting)."""
        self.jobs.cancel()
        self.close_segmenter()
        self.removeObservers()

    def _on_volume_changed(self, caller=None, event=None):
        self.close_segmenter()

    def _on_scene_closing(self, caller=None, event=None):
        self.close_segmenter()

    # ---- prompts ---------------------------------------------------------------------------

    def click(self, volume, segmentation, segment_id, slice_node, point_ras, positive=True,
              before_write=None) -> dict:
        """An include (or exclude) point at a world point in a slice view; {axis: [slices]}.
        `before_write()` runs before the first voxel is written (a GUI's undo state)."""
        return self.segmenter_for(volume, segmentation).add_point(segment_id, slice_node, point_ras, positive,
                                                                  before_write)

    def box(self, volume, segmentation, segment_id, slice_node, corner_ras, opposite_ras,
            before_write=None) -> dict:
        """A box dragged between two world corners in a slice view; {axis: [slices]}."""
        return self.segmenter_for(volume, segmentation).add_box(segment_id, slice_node, corner_ras, opposite_ras,
                                                                before_write)

    def prompt_message(self, written) -> str:
        """The status line after a prompt: what it wrote, and where and in which precision the model runs
        (what "auto" chose)."""
        message = written_message(written)
        engine = self.segmenter.engine_description() if self.segmenter is not None else None
        return f"{message.rstrip('.')}; {self.model_name()} runs {engine}." if engine else message

    def prompt_nodes(self):
        """The prompt markups of the current segmentation (to watch for moves and deletions)."""
        return prompt_nodes(self.segmenter.segmentation_node) if self.segmenter is not None else []

    def apply_moved_prompts(self, before_write=None) -> Optional[dict]:
        """Rerun the slices whose prompt markups were moved or deleted; None when nothing was
        pending (or a propagation runs: its end applies them)."""
        if self.segmenter is None or self.segmenter.running is not None or not self.segmenter.pending_prompts():
            return None
        return self.segmenter.apply_prompts(before_write=before_write)

    # ---- background jobs -------------------------------------------------------------------

    def propagate(self, volume, segmentation, segment_ids, slice_node, options=PropagationOptions(), before_write=None,
                  on_progress=None, on_end=None) -> BackgroundJob:
        """Propagate the segments (None: every prompted one) along the axis `slice_node` cuts, as
        `options` say (Segmenter.propagate). The job is polled by `jobs`."""
        segmenter = self.segmenter_for(volume, segmentation)
        job = segmenter.propagate(segmenter.axis_of_view(slice_node), segment_ids, options, before_write)
        return self.jobs.add(job, on_progress, on_end)

    def warm_up(self, volume, segmentation, slice_node, on_end=None) -> Optional[BackgroundJob]:
        """Encode the slices around a view's slice in the background, if a segmenter for this
        volume and segmentation exists and is idle; `on_end(job)` when done."""
        segmenter = self.serving(volume, segmentation)
        if segmenter is None or segmenter.running is not None:
            return None
        if any(job.name == "warm-up" for job in self.jobs.jobs):
            return None
        return self.jobs.add(segmenter.warm_up(slice_node), on_end=on_end)

    def download(self, name=None, on_progress=None, on_end=None) -> BackgroundJob:
        """Download a registry model's weights (default: the chosen model) into the cache."""
        from samed2.weights import get_checkpoint

        checkpoint = get_checkpoint(name or self.model_name())
        return self.jobs.add(model_weights.download_job(checkpoint, self.cache_dir).start(), on_progress, on_end)

    def import_weights(self, path) -> Path:
        return model_weights.import_file(path, self.cache_dir)

    # ---- export ----------------------------------------------------------------------------

    def export(self, volume, segmentation, kind, path, dicom_folder=None, database=None, only=None) -> str:
        """Write the segments as `kind` ("DICOM-SEG", "NIfTI", "Slicer segmentation") to `path`
        (its suffix is added when missing); returns the status line. DICOM-SEG references the
        volume's DICOM series: from `database` (Slicer's DICOM database) when the volume was
        loaded from it, else the files in `dicom_folder`."""
        from SAMed2SlicerLib import export

        if volume is None or segmentation is None:
            raise ValueError("choose the source volume and the segmentation to export first")
        path = with_suffix(path, EXPORT_SUFFIXES[kind])
        if kind != "DICOM-SEG":
            export.export_labelmap_file(segmentation, volume, path, only)
            return f"Wrote {path}"
        plan = self.install_plan(dicom=True)
        if plan.needed:
            raise RuntimeError(plan.blocker() or "DICOM-SEG export needs these Python packages: "
                               + ", ".join(plan.missing()))
        with self.source_series(volume, dicom_folder, database) as folder:
            report = export.export_dicom_seg(segmentation, volume, folder, path, only=only,
                                             algorithm_version=f"samed2 {self.model_name()}")
        notes = "; ".join(report.repairs + report.warnings)
        return (f"Wrote DICOM-SEG with {len(report.segments)} segment(s) to {path}."
                + (f" Repaired in the source: {notes}" if notes else ""))

    @staticmethod
    def source_series(volume, dicom_folder=None, database=None):
        """A folder with the volume's DICOM files: from the DICOM database, else `dicom_folder`."""
        from SAMed2SlicerLib import export

        if volume.GetAttribute("DICOM.instanceUIDs") and database is not None:
            return export.staged_series(export.dicom_files_for_volume(volume, database))
        if dicom_folder is None or str(dicom_folder) in ("", ".") or not Path(dicom_folder).is_dir():
            raise ValueError(f"'{volume.GetName()}' was not loaded from the DICOM database: choose its DICOM folder "
                             "(Source DICOM folder) so that the SEG can reference its images")
        return nullcontext(Path(dicom_folder))

    @staticmethod
    def temporary_seg_path() -> Path:
        return Path(tempfile.mkdtemp(prefix="samed2-seg-")) / "seg.dcm"


def with_suffix(path, suffix) -> Path:
    """`path` ending in `suffix`; ValueError when no output file was chosen."""
    path = Path(path) if path is not None else Path()
    if str(path) in ("", ".") or path.is_dir():
        raise ValueError(f"choose the output file first (Output file: ...{suffix})")
    return path if str(path).endswith(suffix) else path.with_name(path.name + suffix)

