"""Fine-tune on my corrections: the current volume and the slices of one segment the user prompted or
corrected become a new model, registered in the weights cache under a name the user gives, then selected.

The training runs as a separate process (`python -m samed2_tools.cli train --init BASE --slices ...
--register NAME`, which needs the samed2 tools installed in that Python), so the GUI stays
responsive and a cancel ends it at once: the process is terminated, and since a run registers its
model only after it has finished, a cancelled run leaves no model behind. The job follows the run's
metrics.csv for its progress. The user's segmentation is only read.
"""
import csv
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import numpy as np

from SAMed2SlicerLib.jobs import BackgroundJob, JobCancelled

FINETUNE_JOB = "fine-tune"
STEPS = 100  # as measured in docs/TRAINING.md ("What fine-tuning on 4 slices gains")
BATCH_SIZE = 2
LOG_EVERY = 5
VAL_EVERY = 25  # steps between validations (an epoch of a few slices is a step or two)
POLL_S = 0.5


class FinetuneError(RuntimeError):
    """The training process failed; the message is its last error line."""


def name_state(name: str, cache_dir) -> str:
    """"free", "taken" (an imported model: replace only if the user says so) or "published" (never replaced);
    a WeightsError for a name that cannot name a checkpoint."""
    from samed2.weights import REGISTRY
    from samed2.weights.cache import read_manifest
    from samed2.weights.manage import check_name

    check_name(name)
    if name in REGISTRY:
        return "published"
    return "taken" if name in read_manifest(Path(cache_dir)) else "free"


def write_case(volume, mask: np.ndarray, folder: Path, case: str = "volume") -> Path:
    """The volume (a samed2 Volume) and the segment's voxels on its grid as NRRD files, listed in a cases CSV;
    the case is named after `case` (the volume's name: the model's provenance lists it)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", case).strip("._") or "volume"
    image, label = folder / f"{stem}.nrrd", folder / "label" / f"{stem}.nrrd"
    label.parent.mkdir(exist_ok=True)
    sitk.WriteImage(volume.to_sitk(), str(image), True)
    sitk.WriteImage(volume.to_sitk(mask.astype(np.uint8)), str(label), True)
    cases = folder / "cases.csv"
    with open(cases, "w", newline="") as stream:
        csv.writer(stream).writerows([("image", "label"), (str(image), str(label))])
    return cases


def training_command(python: str, cases: Path, base: str, slices: List[int], axis: int, name: str, out: Path,
                     cache_dir, replace: bool = False, preset: str = "auto", steps: int = STEPS) -> List[str]:
    command = [python, "-m", "samed2_tools.cli", "train", "--data", str(cases), "--init", base, "--labels", "1",
               "--slices", ",".join(str(k) for k in slices), "--axis", str(axis), "--preset", preset,
               "--val-fraction", "0", "--steps", str(steps), "--batch-size", str(BATCH_SIZE),
               "--warmup-steps", "10", "--log-every", str(LOG_EVERY), "--val-every", str(VAL_EVERY),
               "--out", str(out), "--cache-dir", str(cache_dir), "--register", name, "--no-progress"]
    return command + (["--replace"] if replace else [])


def finetune_job(volume, mask: np.ndarray, slices: List[int], axis: int, base: str, name: str, cache_dir,
                 replace: bool = False, preset: str = "auto", steps: int = STEPS, python: Optional[str] = None,
                 case: str = "volume") -> BackgroundJob:
    """A job (start() it) training `base` on `slices` of `mask` along `axis`; its result is `name`, registered."""
    state = name_state(name, cache_dir)
    if state == "published" or (state == "taken" and not replace):
        raise ValueError(f"a model named {name} is already in the weights cache: choose another name"
                         + (" or replace it" if state == "taken" else ""))
    if len(slices) < 2:
        raise ValueError(f"{len(slices)} corrected slice(s) of this segment along this axis: prompt or correct at "
                         "least 2 slices, then fine-tune")

    def work(job):
        folder = Path(tempfile.mkdtemp(prefix="samed2-finetune-"))
        try:
            cases = write_case(volume, mask, folder / "data", case)
            command = training_command(python or python_executable(), cases, base, slices, axis, name,
                                       folder / "run", cache_dir, replace, preset, steps)
            _run_process(job, command, folder / "run" / "metrics.csv", steps)
            return name
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    return BackgroundJob(FINETUNE_JOB, work, total=steps)


def _run_process(job: BackgroundJob, command: List[str], metrics: Path, steps: int) -> None:
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        while process.poll() is None:
            if job.cancel_event.wait(POLL_S):
                process.terminate()
                process.wait()
                raise JobCancelled("fine-tuning cancelled: no model was registered")
            job.advance(_last_step(metrics), steps)
        if process.returncode != 0:
            errors.seek(0)
            lines = [line for line in errors.read().decode("utf-8", "replace").splitlines() if line.strip()]
            raise FinetuneError(lines[-1] if lines else f"training stopped with exit status {process.returncode}")
    job.advance(steps, steps)


def _last_step(metrics: Path) -> int:
    try:
        rows = metrics.read_text().splitlines()
    except OSError:
        return 0
    return int(rows[-1].split(",", 1)[0]) if len(rows) > 1 else 0


def python_executable() -> str:
    """The Python that runs the training: Slicer's PythonSlicer inside Slicer, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def start(logic, volume_node, segmentation_node, segment_id: str, slice_node, name: str, replace: bool = False,
          on_progress=None, on_end=None) -> BackgroundJob:
    """Fine-tune the chosen model on the segment's corrected slices along the view's axis (no view: the axis
    with the most corrected slices); when the job ends well, the new model is selected (the next prompt uses it)."""
    from SAMed2SlicerLib.geometry import engine_volume
    from SAMed2SlicerLib.segments import read_segment

    if not segment_id:
        raise ValueError("select the segment whose corrections the model should learn")
    segmenter = logic.segmenter_for(volume_node, segmentation_node)
    by_axis = {axis: segmenter.corrected_slices(segment_id, axis) for axis in range(3)}
    axis = segmenter.axis_of_view(slice_node) if slice_node is not None else max(by_axis, key=lambda a: len(by_axis[a]))
    slices = by_axis[axis]
    mask = read_segment(segmentation_node, segment_id, volume_node)
    preset = logic.settings.preset if logic.settings.preset != "view" else "auto"
    job = finetune_job(engine_volume(volume_node), mask, slices, axis, logic.model_name(), name,
                       logic.cache_dir, replace, preset, case=volume_node.GetName())

    def ended(finished):
        if finished.error is None and not finished.cancelled:
            logic.configure(model=name)
        if on_end is not None:
            on_end(finished)

    return logic.jobs.add(job.start(), on_progress, ended)
