"""`samed2 eval`: the CVPR 2025 interactive protocol or propagation-only numbers on labelled volumes."""
import argparse
import logging
from pathlib import Path

from samed2.errors import InputError
from samed2_tools.cli.options import add_dicomweb_options, add_model_options, model_and_bank

log = logging.getLogger(__name__)

DATA_HELP = """\
cases to evaluate: IMAGE LABELMAP (one case; IMAGE may be a DICOMweb series URL), a CSV file with the
columns image,label (paths relative to the CSV's folder; optional column case = a name), or a folder
DIR/imagesTr/<case>.nii.gz (or <case>_0000.nii.gz, .nii, .nrrd, .mha, or a DICOM folder <case>/) with
DIR/labelsTr/<case>.nii.gz (and optionally DIR/imagesVal/ + DIR/labelsVal/), the layout `samed2 train` reads"""


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model with the CVPR 2025 interactive protocol or propagation only",
                       description="cvpr25: a box on the middle slice of each object, propagated, then 5 corrective "
                                   "clicks at the deepest voxel of the largest 3D error; DSC, NSD (2 mm), their AUC "
                                   "over the clicks and the time of each step. propagation: a box on the middle "
                                   "slice, propagated both ways; Dice per slice and overall. Writes results.json, "
                                   "objects.csv, steps.csv or slices.csv and a PNG plot to --out.")
    p.add_argument("--data", nargs="+", required=True, metavar="PATH", help=DATA_HELP)
    p.add_argument("--protocol", choices=["cvpr25", "propagation"], default="cvpr25")
    p.add_argument("--labels", type=_label_list, metavar="V,V,...",
                   help="label values to evaluate, each as one object (default: every label of each case)")
    p.add_argument("--clicks", type=int, default=5, help="corrective clicks of the cvpr25 protocol (default 5)")
    p.add_argument("--axis", default="auto", choices=["auto", "0", "1", "2"],
                   help="voxel axis to slice along; auto = the one closest to axial")
    add_model_options(p)
    add_dicomweb_options(p)
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the results")
    p.set_defaults(func=run)


def _label_list(text: str) -> list:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive label values like 5,2,3, got {text!r}")
    return values


def run(args) -> int:
    from samed2_tools.dicomweb import dicom_folder, is_url

    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} is a file: give a folder for the results")
    if any(is_url(path) for path in args.data[1:]) or (is_url(args.data[0]) and len(args.data) != 2):
        raise InputError("--data takes a DICOMweb series URL only as the IMAGE of --data IMAGE LABELMAP")
    with dicom_folder(args.data[0], args.ca_bundle) as image:
        return evaluate(args, [image, *args.data[1:]])


def evaluate(args, data: list) -> int:
    from samed2 import __version__
    from samed2.backends import converted_cache
    from samed2.device import pick_device, pick_precision
    from samed2.session import checked_strategy
    from samed2_tools.cases import list_cases, load_case
    from samed2_tools.evaluate.protocols import EvalSettings, evaluate_case
    from samed2_tools.evaluate.report import write_outputs

    cases = list_cases(data)
    model, bank = model_and_bank(args)
    settings = EvalSettings(args.protocol, args.labels, None if args.axis == "auto" else int(args.axis),
                            None if args.preset == "auto" else args.preset, args.device,
                            checked_strategy(args.strategy, model, bank), args.clicks, args.precision, args.backend,
                            str(converted_cache(args.cache_dir)))
    results = []
    for number, case in enumerate(cases, start=1):
        log.info("case %d/%d: %s", number, len(cases), case.name)
        results += evaluate_case(load_case(case, "evaluation"), model, settings, bank)
    if not results:
        raise InputError("none of the chosen labels occurs in any case: nothing was evaluated")
    info = {"model": args.model, "config": args.config, "bank": args.bank, "cases": [c.name for c in cases],
            "device": str(pick_device(args.device)),
            "precision": pick_precision(args.precision, pick_device(args.device)), "samed2": __version__}
    for path in write_outputs(results, args.out, settings, info):
        print(f"wrote {path}")
    _print_table(results)
    return 0


def _print_table(results: list) -> None:
    from samed2_tools.evaluate.metrics import BAD_SLICE_DICE
    from samed2_tools.evaluate.report import summary

    rows = [r.row() for r in results]
    columns = [k for k in ("dsc_auc", "nsd_auc", "dsc_final", "nsd_final", "dsc", "nsd", "slice_dice_mean",
                           "past_ends", "seconds_total", "seconds") if k in rows[0]]
    print("case / label".ljust(40) + "".join(c.rjust(16) for c in columns))
    for row in rows:
        title = f"{row['case']} / {row['label']} {row['name']}"[:39]
        print(title.ljust(40) + "".join(f"{row[c]:16.4f}" for c in columns))
    auroc = summary(results).get("confidence_auroc")
    if auroc is not None:
        print(f"confidence AUROC for slices with Dice < {BAD_SLICE_DICE}: {auroc:.3f}")
