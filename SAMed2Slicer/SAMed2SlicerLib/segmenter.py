"""Interactive segmentation of one volume node into the segments of one segmentation node.

The markups in the scene are the prompts (see prompts.py); the engine's sessions (one per
slicing axis) turn them into masks, which are written into the segments slice by slice
(see segments.py). Every interaction and every propagation run is one undo step.

State kept here, per (segment, axis): the prompts last run on each slice, and the masks last
written to each slice. A slice whose voxels no longer match what was written was corrected by
hand (or restored by an undo): propagation keeps it and uses it as the user's answer there.
Slices that already held voxels this segmenter did not write (drawn before, or propagated
before the scene was saved) are never overwritten by propagation.

The engine (and so torch) is imported when a Segmenter is made, never at module import.
"""
import logging
import time
from typing import Dict, List, Optional

import numpy as np

from samed2.choices import SESSION_BACKEND, SESSION_PRECISION, PropagationOptions
from samed2.errors import InputError
from samed2.presets import ct_window
from SAMed2SlicerLib.geometry import engine_volume, view_axis
from SAMed2SlicerLib.jobs import BackgroundJob
from SAMed2SlicerLib.prompts import SEGMENT, add_box, add_point, collect_prompts, prompt_nodes, prompted_axes
from SAMed2SlicerLib.segments import EditStep, Target, UndoStack, check_editable, read_slices

log = logging.getLogger(__name__)
CACHE_BYTES_PER_AXIS = 1024 ** 3
WRITE_INTERVAL_S = 0.5
"""Propagation writes its slices at most this often (each write rebuilds the segment's 3D surface)."""


class BusyError(RuntimeError):
    """An operation was asked for while a propagation run is going on."""


def intensity_preset(name, volume_node):
    """The engine preset for a preset name; "view" = the volume's displayed window/level."""
    if name != "view":
        return name
    display = volume_node.GetDisplayNode()
    if display is None:
        return "auto"
    return ct_window(display.GetWindow(), display.GetLevel(), name="view")


class Segmenter:
    """Prompts -> engine -> segments, for one volume and one segmentation.

    `model` is an engine model (samed2.model / samed2.weights.load_model); `device`, `preset`,
    `precision`, `backend`, `converted_cache`, `strategy` and `bank` go to each engine Session (with the
    Session's defaults, samed2.choices; the module's Logic passes its EngineSettings).
    """

    def __init__(self, volume_node, segmentation_node, model, device="auto", preset="auto",
                 cache_bytes=CACHE_BYTES_PER_AXIS, strategy=None, bank=None, precision=SESSION_PRECISION,
                 backend=SESSION_BACKEND, converted_cache=None):
        check_editable(segmentation_node)
        self.volume_node = volume_node
        self.segmentation_node = segmentation_node
        self.volume = engine_volume(volume_node)
        self.model = model
        self._options = dict(device=device, preset=intensity_preset(preset, volume_node),
                             cache_bytes=cache_bytes, strategy=strategy, bank=bank, precision=precision,
                             backend=backend, converted_cache=converted_cache)
        self._sessions = {}
        self._object_ids: Dict[str, int] = {}
        self._applied: Dict[tuple, dict] = {}  # (segment id, axis) -> {index: SlicePrompt}
        self._written: Dict[tuple, dict] = {}  # (segment id, axis) -> {index: packed mask}
        self.undo_stack = UndoStack()
        self._run: Optional[BackgroundJob] = None

    # ---- sessions and objects -------------------------------------------------------------

    def target(self, segment_id, axis) -> Target:
        return Target(self.segmentation_node, segment_id, self.volume_node, axis)

    def object_id(self, segment_id) -> int:
        return self._object_ids.setdefault(segment_id, len(self._object_ids) + 1)

    def session(self, axis):
        """The engine session slicing along `axis`, made on first use and resumed from the
        prompts already in the scene."""
        if axis not in self._sessions:
            from samed2.session import Session

            session = Session(self.volume, self.model, axis=axis, **self._options)
            self._sessions[axis] = session
            log.info("segmenting along %s %s", "ijk"[axis], self.engine_description())
            self._resume(session, axis)
        return self._sessions[axis]

    def engine_description(self) -> Optional[str]:
        """Where and in which precision the engine runs ("on cpu in bf16 (precision setting: auto)");
        None before the first session."""
        session = next(iter(self._sessions.values()), None)
        if session is None:
            return None
        features = session.features
        return f"on {features.device} in {features.precision} (precision setting: {self._options['precision']})"

    def _resume(self, session, axis) -> None:
        """Replay the scene's prompts into a new session. Slices that already show voxels are
        taken as their results (kept as they are); the others are left for the next apply."""
        for segment_id in self.prompted_segments(axis):
            target = self.target(segment_id, axis)
            prompts = collect_prompts(self.volume, target)
            content = read_slices(target, prompts)
            applied = self._applied.setdefault((segment_id, axis), {})
            for index, prompt in prompts.items():
                if content[index].any():
                    if prompt.box is None:  # clicks correct what the slice shows (a box-only model boxes it)
                        session.set_mask(self.object_id(segment_id), index, content[index])
                    session.add_prompt(self.object_id(segment_id), index, prompt.points, prompt.box, replace=True)
                    applied[index] = prompt

    def prompted_segments(self, axis) -> List[str]:
        """Segments of the segmentation that have prompts on slices along `axis`."""
        segmentation = self.segmentation_node.GetSegmentation()
        ids = {n.GetAttribute(SEGMENT) for n in prompt_nodes(self.segmentation_node, axis=axis)}
        return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())
                if segmentation.GetNthSegmentID(i) in ids]

    def axis_of_view(self, slice_node) -> int:
        """The voxel axis this slice view cuts the volume along (InputError if oblique)."""
        return view_axis(self.volume, slice_node)

    def view_slice_index(self, slice_node) -> int:
        """The volume slice shown in a slice view (the one through the view's centre)."""
        axis = self.axis_of_view(slice_node)
        origin = np.asarray(slice_node.GetSliceToRAS().MultiplyPoint((0, 0, 0, 1))[:3])
        index = int(np.floor(self.volume.to_slice_coords(origin, axis)[0] + 0.5))
        return min(max(index, 0), self.volume.num_slices(axis) - 1)

    def show_slice(self, slice_node, index) -> None:
        """Move a slice view to volume slice `index` along the axis it cuts, keeping its in-plane position."""
        axis = self.axis_of_view(slice_node)
        origin = np.asarray(slice_node.GetSliceToRAS().MultiplyPoint((0, 0, 0, 1))[:3])
        ijk = np.array(self.volume.physical_to_index(origin), dtype=float)
        ijk[axis] = index
        slice_node.JumpSliceByOffsetting(*self.volume.index_to_physical(ijk))

    def confidences(self, segment_id, axis) -> Dict[int, float]:
        """slice -> the engine's confidence in the segment's result there ({} before any result)."""
        session = self._sessions.get(axis)
        obj = self.object_id(segment_id)
        return session.confidences(obj) if session is not None and obj in session.objects else {}

    def warm_up(self, slice_node, radius=4) -> BackgroundJob:
        """Encode slices around the one a view shows, in the background (faster next click).
        The job ends when the engine is idle again: poll it so the engine gets the GIL."""
        axis = self.axis_of_view(slice_node)
        session = self.session(axis)
        session.precompute(self.view_slice_index(slice_node), radius)
        return BackgroundJob("warm-up", lambda job: session.wait_idle()).start()

    # ---- prompting ------------------------------------------------------------------------

    def add_point(self, segment_id, slice_node, point_ras, positive=True, before_write=None):
        """An include (or exclude) click at a world point in a slice view: stored as a markup,
        run, and the segment's slice updated (one undo step). Returns {axis: [slices]}."""
        axis = self._prompt_axis(slice_node)
        self.volume.to_slice_point(point_ras, axis)  # InputError (nothing added) when outside
        self.session(axis)
        add_point(self.target(segment_id, axis), point_ras, positive)
        return self.apply_prompts(segment_id, before_write=before_write)

    def add_box(self, segment_id, slice_node, corner_ras, opposite_ras, before_write=None):
        """A box dragged in a slice view between two world corners: stored as an ROI, run, and
        the segment's slice updated (one undo step). Returns {axis: [slices]}."""
        axis = self._prompt_axis(slice_node)
        coords = self.volume.to_slice_coords(np.array([corner_ras, opposite_ras], float), axis)
        if np.any(np.abs(coords[1, 1:] - coords[0, 1:]) < 1.0):
            raise InputError("the box is less than one voxel wide or high: drag a box over the object")
        self.volume.to_slice_point((np.asarray(corner_ras, float) + opposite_ras) / 2, axis)
        self.session(axis)
        add_box(self.target(segment_id, axis), slice_node, corner_ras, opposite_ras, self.volume.spacing[axis])
        return self.apply_prompts(segment_id, before_write=before_write)

    def _prompt_axis(self, slice_node) -> int:
        self._require_idle()
        return self.axis_of_view(slice_node)

    def apply_prompts(self, segment_id=None, step=None, before_write=None):
        """Run the slices whose prompts changed in the scene (added, moved or deleted markups)
        and write them; slices left without prompts are cleared. One undo step unless `step`
        is given. `before_write()` runs once, before the first write (undo state). Returns
        {axis: [slices written]}."""
        self._require_idle()
        own_step = step is None
        if own_step:
            self._catch_up_with_undo()
        step = step or EditStep("prompts", before_write)
        changed = {}
        try:
            for segment in [segment_id] if segment_id else self._segments_with_prompt_state():
                for axis in self._prompt_state_axes(segment):
                    changed[axis] = changed.get(axis, []) + self._apply_axis(segment, axis, step)
        finally:
            if own_step:
                self.undo_stack.push(step)
        return {axis: sorted(indices) for axis, indices in changed.items() if indices}

    def _segments_with_prompt_state(self) -> List[str]:
        ids = {segment_id for segment_id, _ in self._applied}
        ids.update(n.GetAttribute(SEGMENT) for n in prompt_nodes(self.segmentation_node))
        segmentation = self.segmentation_node.GetSegmentation()
        return [s for s in sorted(ids) if segmentation.GetSegment(s) is not None]

    def _prompt_state_axes(self, segment_id) -> List[int]:
        axes = set(prompted_axes(self.segmentation_node, segment_id))
        return sorted(axes | {axis for s, axis in self._applied if s == segment_id})

    def pending_prompts(self, segment_id=None) -> Dict[tuple, List[int]]:
        """{(segment id, axis): [slices]} whose prompts in the scene differ from those last run
        (what apply_prompts would run); nothing is computed or written."""
        pending = {}
        for segment in [segment_id] if segment_id else self._segments_with_prompt_state():
            for axis in self._prompt_state_axes(segment):
                current = collect_prompts(self.volume, self.target(segment, axis))
                changed = self._changed_slices(current, self._applied.get((segment, axis), {}))
                if changed:
                    pending[(segment, axis)] = changed
        return pending

    @staticmethod
    def _changed_slices(current, applied) -> List[int]:
        return [i for i in sorted(set(current) | set(applied)) if current.get(i) != applied.get(i)]

    def _apply_axis(self, segment_id, axis, step) -> List[int]:
        session = self.session(axis)
        target = self.target(segment_id, axis)
        current = collect_prompts(self.volume, target)
        applied = self._applied.setdefault((segment_id, axis), {})
        obj = self.object_id(segment_id)
        masks = {}
        for index in self._changed_slices(current, applied):
            if index in current:
                prompt = current[index]
                masks[index] = session.add_prompt(obj, index, prompt.points, prompt.box, replace=True)
                applied[index] = prompt
            else:
                session.clear_slice(obj, index)
                masks[index] = np.zeros(self.volume.slice_shape(axis), bool)
                del applied[index]
        self._write(step, target, masks)
        return sorted(masks)

    def _write(self, step, target, masks) -> None:
        """Write through the undo step, remembering what was written (after the Segment Editor's
        masking; and, for undo, what this segmenter had written there before)."""
        if not masks:
            return
        held = step.write(target, masks)
        written = self._written.setdefault((target.segment_id, target.axis), {})
        for index, mask in held.items():
            step.memo.setdefault((target.segment_id, target.axis, index), written.get(index))
            written[index] = np.packbits(np.asarray(mask, bool))

    # ---- propagation ----------------------------------------------------------------------

    def propagate(self, axis, segment_ids=None, options=PropagationOptions(), before_write=None):
        """Start propagating along `axis` from the prompted (and hand-corrected) slices, for the
        given segments (default: every segment prompted on that axis), as `options` (a
        samed2.choices.PropagationOptions) say. Returns the running BackgroundJob: poll() it from the
        main thread, or wait() for it. One undo step; `before_write()` runs on the polling thread
        before the run's first write."""
        self._require_idle()
        self._catch_up_with_undo()
        step = EditStep("propagation", before_write)
        self.apply_prompts(step=step)
        session = self.session(axis)
        segment_ids = list(segment_ids or self.prompted_segments(axis))
        if not segment_ids:
            raise InputError(f"nothing to propagate along {'ijk'[axis]}: place a point or a box on the object first")
        protected = {self.object_id(s): self._prepare(session, s, axis, step) for s in segment_ids}
        targets = {self.object_id(s): self.target(s, axis) for s in segment_ids}

        def work(job):
            walk = session.propagate(list(targets), options, job.cancel_event)
            for done, result in enumerate(walk, 1):
                job.emit(result)
                job.advance(done, index=result.index)

        pending, last_write = [], [0.0]

        def write_pending():
            for obj, target in targets.items():
                self._write(step, target, {r.index: r.mask for r in pending
                                           if r.obj_id == obj and r.index not in protected[obj]})
            pending.clear()
            last_write[0] = time.monotonic()

        def consume(results):
            pending.extend(results)
            if time.monotonic() - last_write[0] >= WRITE_INTERVAL_S:
                write_pending()

        def finish():
            try:
                if self._run.error is None:  # the last batch, also after a cancel: what was done is kept
                    write_pending()
            finally:
                self.undo_stack.push(step)

        total = sum(self._expected_slices(s, axis, options) for s in segment_ids)
        self._run = BackgroundJob("propagation", work, consume, finish, total).start()
        return self._run

    def _prepare(self, session, segment_id, axis, step) -> set:
        """Give the engine the hand-corrected slices; return the slices propagation must keep
        (voxels this segmenter did not write, on slices without prompts)."""
        target = self.target(segment_id, axis)
        content = read_slices(target, range(self.volume.num_slices(axis)))
        written = self._written.setdefault((segment_id, axis), {})
        prompted = self._applied.get((segment_id, axis), {})
        obj = self.object_id(segment_id)
        for index, bits in list(written.items()):
            corrected = np.packbits(content[index])
            if index not in prompted and not np.array_equal(corrected, bits):
                session.set_mask(obj, index, content[index])
                step.memo.setdefault((segment_id, axis, index), bits)
                written[index] = corrected
        return {index for index, mask in content.items()
                if mask.any() and index not in written and index not in prompted}

    def corrected_slices(self, segment_id, axis) -> List[int]:
        """The segment's slices along `axis` that hold the user's answer: prompted (the user saw and kept the
        result), corrected by hand after they were written, or drawn without this segmenter."""
        content = read_slices(self.target(segment_id, axis), range(self.volume.num_slices(axis)))
        written = self._written.get((segment_id, axis), {})
        prompted = self._applied.get((segment_id, axis), {})
        return [index for index, mask in sorted(content.items()) if mask.any() and (
            index in prompted or index not in written or not np.array_equal(np.packbits(mask), written[index]))]

    def _expected_slices(self, segment_id, axis, options) -> int:
        """At most how many slices a run computes for one segment (for the progress bar)."""
        last = self.volume.num_slices(axis) - 1
        start, stop = options.start, options.stop
        low, high = sorted((0 if start is None else start, last if stop is None else stop))
        seeds = [i for i in self._applied.get((segment_id, axis), {}) if low <= i <= high] or [low]
        if options.direction == "up":
            return high - min(seeds)
        if options.direction == "down":
            return max(seeds) - low
        return high - low + 1 - len(seeds)

    @property
    def running(self) -> Optional[BackgroundJob]:
        """The propagation run going on, if any."""
        return self._run if self._run is not None and not self._run.finished else None

    def _require_idle(self) -> None:
        if self.running is not None:
            raise BusyError("a propagation is running: wait for it to finish or cancel it")

    # ---- undo and lifetime ----------------------------------------------------------------

    def undo(self) -> bool:
        """Undo the last interaction or propagation run: the segment slices it wrote get their
        previous voxels back exactly. The engine forgets results it computed there (prompt
        markups stay: delete them to drop their prompts). False when there is nothing to undo."""
        self._require_idle()
        step = self.undo_stack.undo()
        if step is None:
            return False
        self._forget(step)
        return True

    def _catch_up_with_undo(self) -> None:
        """Steps undone outside (the Segment Editor's undo restores the segmentation): forget
        them as undo() would, so restored slices do not count as hand corrections."""
        step = self.undo_stack.pop_undone()
        while step is not None:
            self._forget(step)
            step = self.undo_stack.pop_undone()

    def _forget(self, step) -> None:
        """Bookkeeping of an undone step: what was written before it, and engine results that
        no prompt backs any more."""
        for (segment_id, axis, index), previous in step.memo.items():
            written = self._written.setdefault((segment_id, axis), {})
            if previous is None:
                written.pop(index, None)
            else:
                written[index] = previous
            if index not in self._applied.get((segment_id, axis), {}) and axis in self._sessions:
                self._sessions[axis].clear_slice(self.object_id(segment_id), index)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Cancel a running propagation and free the engine sessions."""
        run = self.running
        if run is not None:
            run.cancel()
            try:
                run.wait()
            except Exception as error:  # closing anyway: the reason is logged, not raised
                log.warning("propagation ended with an error while closing: %s", error)
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()
