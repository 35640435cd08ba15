"""`samed2 demo`: the main job end to end on a public CT: box, mask, propagation, DICOM-SEG, picture."""
import sys
from pathlib import Path

DEFAULT_MODEL, FALLBACK_MODEL = "samed2", "medsam-lite"


def register(sub) -> None:
    p = sub.add_parser("demo", help="segment the liver of a public sample CT end to end (downloads what it needs)",
                       description="Fetches the model weights and a public 20-slice CT series into the cache "
                                   "(checksums verified), boxes the liver on the middle slice, propagates, and "
                                   "writes a label map, a DICOM-SEG and a PNG picture.")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="weights name (downloaded if missing; see `samed2 weights list`); when the default "
                        "SAMed-2 weights cannot be downloaded, MedSAM-Lite (from PyPI) is used instead")
    p.add_argument("--out", default="samed2-demo", help="output folder (default: ./samed2-demo)")
    p.add_argument("--sample-url", help="a folder URL to fetch the sample series from file by file (default: "
                   "TotalSegmentator's source distribution on PyPI, which carries it)")
    p.add_argument("--cache-dir", help="weights and sample cache (default: $SAMED2_CACHE or ~/.cache/samed2)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args) -> int:
    from samed2 import weights
    from samed2.errors import DownloadError
    from samed2_tools.sample import fetch_sample

    try:
        model = _model(args.model, args.cache_dir)
    except DownloadError as exc:
        if args.model != DEFAULT_MODEL:
            raise
        print(f"the {DEFAULT_MODEL} weights cannot be downloaded ({exc})\n"
              f"running the demo with {FALLBACK_MODEL} (MedSAM-Lite, from its PyPI wheel) instead", file=sys.stderr)
        args.model = FALLBACK_MODEL
        model = _model(FALLBACK_MODEL, args.cache_dir)
    series = fetch_sample(weights.cache_dir(args.cache_dir), args.sample_url)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _segment_liver(model, series, out, args)
    return 0


def _model(name: str, cache_dir):
    """The cached model, downloading it first if needed (offline: an error naming the import command)."""
    from tqdm import tqdm

    from samed2 import weights
    from samed2.errors import WeightsError

    try:
        weights.cached_checkpoint(name, cache_dir)
    except WeightsError:
        print(f"downloading the {name} weights (checksum verified) ...")
        with tqdm(unit="B", unit_scale=True, desc=name) as bar:
            def progress(done, total):
                bar.total = total
                bar.update(done - bar.n)
            weights.download(name, cache_dir, progress=progress)
    return weights.load_model(name, cache_dir)


def _segment_liver(model, series_dir: Path, out: Path, args) -> None:
    import numpy as np
    from tqdm import tqdm

    from samed2.dicomseg import export_seg
    from samed2.labelmap import LabelMap, write_labelmap
    from samed2.session import Session
    from samed2.volume import get_slice
    from samed2.volume_files import load_volume
    from samed2_tools.overlay import render_overlay
    from samed2_tools.sample import LIVER_BOX_RAS

    volume = load_volume(series_dir)
    axis = volume.slicing_axis((0.0, 0.0, 1.0))
    x0, y0, x1, y1, z = LIVER_BOX_RAS
    corners = volume.to_slice_coords([(x0, y0, z), (x1, y1, z)], axis)
    index = int(round(corners[0][0]))
    box = (corners[0][1], corners[0][2], corners[1][1], corners[1][2])
    with Session(volume, model, axis=axis, preset="soft_tissue", device=args.device) as session:
        session.add_prompt(1, index, box=box)
        for _ in tqdm(session.propagate(), desc="propagating", unit="slice"):
            pass
        mask = session.mask_volume(1)
        picture = session.window.apply(volume.get_slice(axis, index))
    labels = LabelMap(volume.to_sitk(mask.astype(np.uint8)), names={1: "liver"}, source="samed2 demo")
    written = [write_labelmap(labels, out / "liver.nii.gz")]
    export_seg(labels, series_dir, out / "liver_seg.dcm", algorithm_version=f"weights {args.model}")
    written.append(out / "liver_seg.dcm")
    box_xyxy = [tuple(min(a, b) for a, b in zip(box[:2], box[2:])) + tuple(max(a, b) for a, b in zip(box[:2], box[2:]))]
    written.append(render_overlay(picture, get_slice(mask, axis, index), out / "liver.png", boxes=box_xyxy,
                                  title=f"samed2 demo: liver, slice {index}"))
    filled = sum(1 for i in range(volume.num_slices(axis)) if get_slice(mask, axis, i).any())
    print(f"liver: {int(mask.sum())} voxels on {filled} of {volume.num_slices(axis)} slices")
    for path in written:
        print(f"wrote {path}")
