"""`samed2 segment`: prompts on an image, the mask, propagation, a label map and a picture."""
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from samed2.choices import DIRECTIONS, STOP_AFTER_ABSENT, PropagationOptions
from samed2.errors import InputError
from samed2_tools.cli.options import add_dicomweb_options, add_model_options, model_and_bank

log = logging.getLogger(__name__)
SPACES = {"ras": "RAS", "lps": "LPS"}


def register(sub) -> None:
    p = sub.add_parser("segment", help="segment one structure in a volume from points and/or boxes",
                       description="Prompt with points and boxes, propagate through the volume and write a label map.")
    p.add_argument("image", help="NIfTI/NRRD/MHA file, DICOM folder or DICOMweb series URL "
                                 "(http(s)://HOST/PREFIX/studies/STUDY_UID/series/SERIES_UID)")
    p.add_argument("--point", action="append", default=[], metavar="X,Y,Z[,+|-]",
                   help="a click; '+' (default) includes, '-' excludes; repeatable")
    p.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1,Z",
                   help="a box on the slice through Z; repeatable")
    p.add_argument("--coords", choices=["ras", "lps", "voxel"], default="ras",
                   help="coordinate space of --point/--box (voxel = continuous i, j, k)")
    p.add_argument("--axis", default="auto", choices=["auto", "0", "1", "2"],
                   help="voxel axis to slice along; auto = the one closest to the axial (Z) direction")
    p.add_argument("--propagate", default=DIRECTIONS[0], choices=[*DIRECTIONS, "none"])
    p.add_argument("--range", metavar="A:B", help="propagate only between slices A and B (inclusive)")
    p.add_argument("--stop-after-absent", type=int, default=STOP_AFTER_ABSENT,
                   help="stop after this many slices without the object (0: never)")
    add_model_options(p)
    add_dicomweb_options(p)
    p.add_argument("--out", required=True, help="label map to write (.nii.gz, .nrrd, .seg.nrrd)")
    p.add_argument("--overlay", help="PNG picture of the first prompted slice")
    p.add_argument("--report", help="JSON file: a confidence (0..1) for every slice with a result, propagation's "
                                    "last slices included: [{\"object\", \"slice\", \"confidence\", \"prompted\"}]")
    p.set_defaults(func=run)


def run(args) -> int:
    from samed2.files import check_output_path
    from samed2.labelmap import LABELMAP_SUFFIXES
    from samed2.volume_files import load_volume
    from samed2_tools.dicomweb import dicom_folder

    check_output_path(args.out, LABELMAP_SUFFIXES)
    if args.overlay:
        check_output_path(args.overlay, (".png",))
    if args.report:
        check_output_path(args.report, (".json",))
    with dicom_folder(args.image, args.ca_bundle) as image:
        volume = load_volume(image)
    axis = _axis(args, volume)
    prompts = _prompts(args, volume, axis)
    model, bank = model_and_bank(args)
    result, report = segment(volume, model, axis, prompts, args, bank)
    _write_outputs(args, volume, axis, prompts, result)
    if args.report:
        _write_report(args.report, report)
    return 0


def _axis(args, volume) -> int:
    if args.axis != "auto":
        return int(args.axis)
    if args.coords == "voxel":
        return 2
    return volume.slicing_axis((0.0, 0.0, 1.0), space=SPACES[args.coords])


def _parse_numbers(text: str, count: int, what: str, allow_sign=False):
    parts = [p.strip() for p in text.split(",")]
    sign = None
    if allow_sign and len(parts) == count + 1 and parts[-1] in "+-":
        sign = parts.pop() == "+"
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != count:
        raise InputError(f"cannot read {what} {text!r}: expected {count} comma-separated numbers")
    return values, True if sign is None else sign


def _to_slice(volume, xyz, axis, coords):
    """(index, x, y) of a point given in RAS, LPS or voxel coordinates; refuses points outside."""
    from samed2.volume import ijk_to_slice_coords

    if coords == "voxel":
        volume.require_inside(np.asarray(xyz), "point")
        index, x, y = ijk_to_slice_coords(np.asarray(xyz, dtype=float), axis)
        return int(round(index)), float(x), float(y)
    point = volume.to_slice_point(xyz, axis, space=SPACES[coords])
    return point.index, point.x, point.y


def _prompts(args, volume, axis) -> dict:
    """slice index -> {"points": [(x, y, positive)], "box": (x0, y0, x1, y1) or None}."""
    if not args.point and not args.box:
        raise InputError("give at least one --point or --box")
    slices = defaultdict(lambda: {"points": [], "box": None})
    for text in args.point:
        (x, y, z), positive = _parse_numbers(text, 3, "point", allow_sign=True)
        index, sx, sy = _to_slice(volume, (x, y, z), axis, args.coords)
        slices[index]["points"].append((sx, sy, positive))
    for text in args.box:
        (x0, y0, x1, y1, z), _ = _parse_numbers(text, 5, "box")
        first = _to_slice(volume, (x0, y0, z), axis, args.coords)
        second = _to_slice(volume, (x1, y1, z), axis, args.coords)
        if first[0] != second[0]:
            raise InputError(f"box {text!r} does not lie on one slice along axis {axis}: choose --axis")
        slices[first[0]]["box"] = (first[1], first[2], second[1], second[2])
    return dict(slices)


def _limits(text):
    if not text:
        return None, None
    try:
        low, high = (int(v) for v in text.split(":"))
    except ValueError:
        raise InputError(f"cannot read --range {text!r}: expected A:B with slice numbers") from None
    return low, high


def segment(volume, model, axis, prompts, args, bank=None):
    """The mask volume and the report's records (confidence_records)."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from samed2.backends import converted_cache
    from samed2.session import Session

    with Session(volume, model, axis=axis, preset=args.preset, device=args.device, bank=bank,
                 strategy=args.strategy, precision=args.precision, backend=args.backend,
                 converted_cache=converted_cache(args.cache_dir)) as session:
        for index, prompt in sorted(prompts.items()):
            mask = session.add_prompt(1, index, points=prompt["points"], box=prompt["box"])
            log.info("slice %d: %d voxels", index, int(mask.sum()))
        if args.propagate != "none":
            low, high = _limits(args.range)
            options = PropagationOptions(args.propagate, low, high, args.stop_after_absent)
            steps = session.propagate(options=options)
            with logging_redirect_tqdm():
                for _ in tqdm(steps, desc="propagating", unit="slice"):
                    pass
        return session.mask_volume(1), confidence_records(session, 1)


def confidence_records(session, obj_id: int) -> list:
    """One record per slice the object has a result on; slice = index along the segmenting axis."""
    prompted = set(session.prompted_slices(obj_id))
    return [{"object": obj_id, "slice": index, "confidence": round(confidence, 4), "prompted": index in prompted}
            for index, confidence in session.confidences(obj_id).items()]


def _write_report(path, records: list) -> None:
    import json

    from samed2.files import atomic_output

    with atomic_output(Path(path)) as temporary:
        Path(temporary).write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    least = min(records, key=lambda r: r["confidence"])
    print(f"wrote {path}: {len(records)} slices, least confident slice {least['slice']} "
          f"({least['confidence']:.2f})")


def _write_outputs(args, volume, axis, prompts, mask: np.ndarray) -> None:
    from samed2.labelmap import LabelMap, write_labelmap
    from samed2.volume import get_slice

    image = volume.to_sitk(mask.astype(np.uint8))
    out = write_labelmap(LabelMap(image, names={1: "segment"}, source=args.image), args.out)
    filled = [i for i in range(volume.num_slices(axis)) if get_slice(mask, axis, i).any()]
    print(f"wrote {out}: {int(mask.sum())} voxels on {len(filled)} slices")
    if args.overlay:
        from samed2.presets import default_preset, get_preset
        from samed2_tools.overlay import render_overlay

        index = min(prompts)
        preset = default_preset(volume.array, volume.modality) if args.preset == "auto" else \
            get_preset(args.preset, volume.array, volume.modality)
        picture = preset.apply(volume.get_slice(axis, index))
        boxes = [prompts[index]["box"]] if prompts[index]["box"] else []
        render_overlay(picture, get_slice(mask, axis, index), args.overlay, prompts[index]["points"], boxes,
                       title=f"{Path(args.image).name}: slice {index} along axis {axis}")
        print(f"wrote {args.overlay}")
