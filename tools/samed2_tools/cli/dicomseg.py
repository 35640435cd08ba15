"""`samed2 export-seg` and `samed2 import-seg`: DICOM Segmentation to and from label maps."""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from samed2.choices import EFFECT_NAME
from samed2_tools.cli.options import add_dicomweb_options

DICOM_HELP = "folder of the source DICOM series, or its DICOMweb URL (http(s)://HOST/PREFIX/studies/S/series/S)"


def register(subparsers) -> None:
    export = subparsers.add_parser(
        "export-seg", help="write a DICOM Segmentation from label maps and their source DICOM series",
        description="One segment per label. Label maps on another grid than the series are resampled onto it "
                    "in physical space (nearest neighbour). Defects of the series are repaired in memory and reported.")
    export.add_argument("--labels", required=True, nargs="+", type=Path, metavar="LABELMAP",
                        help="label map(s): .nii.gz, .nii, .nrrd or .seg.nrrd; several maps may overlap each other")
    export.add_argument("--dicom", required=True, metavar="DIR|URL", help=DICOM_HELP)
    export.add_argument("--series", metavar="UID", help="SeriesInstanceUID to use when DIR holds several series")
    export.add_argument("--meta", type=Path, metavar="JSON",
                        help="segment names, codes and colours in dcmqi's seg-example.json format")
    export.add_argument("--fractional", action="store_true", help="FRACTIONAL (probability) instead of BINARY")
    export.add_argument("--only", type=int, nargs="+", metavar="LABEL", help="export only these label values")
    export.add_argument("--name", action="append", type=_label_name, default=[], metavar="LABEL=NAME",
                        help="name a label, e.g. 5=liver (repeatable); known names get SNOMED CT codes and colours")
    export.add_argument("--algorithm-type", choices=["SEMIAUTOMATIC", "AUTOMATIC"], default="SEMIAUTOMATIC")
    export.add_argument("--algorithm-name", default=EFFECT_NAME)
    export.add_argument("--algorithm-version", metavar="TEXT",
                        help="what made the masks, e.g. the weights' name and SHA-256 (default: the samed2 version)")
    export.add_argument("--repaired-series-out", type=Path, metavar="DIR",
                        help="also write the source slices with the repairs applied (UIDs the SEG references)")
    export.add_argument("--out", type=Path, metavar="FILE.dcm", help="the SEG file (needed unless --stow is given)")
    export.add_argument("--stow", metavar="URL", help="also store the SEG on this DICOMweb server (STOW-RS), e.g. "
                                                      "http://localhost:8042/dicom-web")
    add_dicomweb_options(export)
    export.set_defaults(func=export_handler)

    imported = subparsers.add_parser(
        "import-seg", help="read a DICOM Segmentation back to a label map on its source series",
        description="Label values are the segment numbers; names and colours are kept (seg.nrrd header, or "
                    "a .labels.json beside a NIfTI file).")
    imported.add_argument("seg", type=Path, metavar="FILE.dcm")
    imported.add_argument("--dicom", required=True, metavar="DIR|URL", help=DICOM_HELP)
    imported.add_argument("--series", metavar="UID", help="SeriesInstanceUID (default: the one the SEG references)")
    imported.add_argument("--allow-overlap", action="store_true",
                          help="where segments overlap, keep the higher segment number instead of failing")
    imported.add_argument("--out", required=True, type=Path, metavar="LABELMAP",
                          help=".nii.gz, .nii, .nrrd or .seg.nrrd")
    add_dicomweb_options(imported)
    imported.set_defaults(func=import_handler)


def _label_name(text: str) -> tuple[int, str]:
    value, separator, name = text.partition("=")
    if not separator or not value.strip().lstrip("-").isdigit() or not name.strip():
        raise argparse.ArgumentTypeError(f"expected LABEL=NAME, e.g. 5=liver, got {text!r}")
    return int(value), name.strip()


def _quiet_highdicom() -> None:
    """highdicom logs every module it copies at INFO; keep that for --verbose only."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("highdicom").setLevel(logging.WARNING)


def export_handler(args: argparse.Namespace) -> int:
    from samed2.dicomseg import export_seg, load_series, write_repaired_series
    from samed2.errors import InputError
    from samed2.labelmap import read_labelmap
    from samed2_tools.dicomweb import dicom_folder, service_root

    if args.out is None and args.stow is None:
        raise InputError("give --out FILE.dcm, --stow URL or both")
    stow_root = service_root(args.stow) if args.stow else None
    _quiet_highdicom()
    maps = [read_labelmap(path) for path in args.labels]
    for labelmap in maps:
        labelmap.names.update(dict(args.name))
    out = args.out or Path(tempfile.mkdtemp(prefix="samed2-seg-")) / "seg.dcm"
    with dicom_folder(args.dicom, args.ca_bundle) as folder:
        series = load_series(folder, args.series)
        report = export_seg(maps, series, out, metadata=args.meta, fractional=args.fractional, only=args.only,
                            algorithm_type=args.algorithm_type, algorithm_name=args.algorithm_name,
                            algorithm_version=args.algorithm_version)
        if args.repaired_series_out:
            written = write_repaired_series(series, args.repaired_series_out)
    print(f"wrote {report.path} ({'FRACTIONAL' if args.fractional else 'BINARY'}) on series {report.source_series_uid}")
    for segment in report.segments:
        print(f"  segment {segment.number}: {segment.label} ({segment.voxels} voxels)")
    if report.repairs or report.warnings:
        print(f"  {len(report.repairs)} repair(s) of the source and {len(report.warnings)} warning(s), listed above")
    if args.repaired_series_out:
        print(f"wrote {len(written)} repaired source slices to {args.repaired_series_out}")
    if stow_root:
        _stow(report.path, stow_root, args.ca_bundle, keep=args.out is not None)
    return 0


def _stow(path: Path, root: str, ca_bundle, keep: bool) -> None:
    """Store the SEG; without --out its temporary file goes once stored, and stays (named) when not."""
    from samed2.errors import DicomError
    from samed2_tools.dicomweb import open_session, store

    try:
        store(path, root, open_session(ca_bundle))
    except DicomError as error:
        raise DicomError(f"{error}; the SEG is kept in {path}") from None
    print(f"stored {path.name} on {root}")
    if not keep:
        path.unlink()
        path.parent.rmdir()


def import_handler(args: argparse.Namespace) -> int:
    from samed2.dicomseg import read_seg
    from samed2.labelmap import write_labelmap
    from samed2_tools.dicomweb import dicom_folder

    _quiet_highdicom()
    with dicom_folder(args.dicom, args.ca_bundle) as folder:
        imported = read_seg(args.seg, folder, args.series)
    path = write_labelmap(imported.to_labelmap(allow_overlap=args.allow_overlap), args.out)
    print(f"wrote {path}: {len(imported.segments)} segment(s) on series {imported.series.series_uid}")
    for segment in imported.segments:
        print(f"  label {segment.number}: {segment.label}")
    return 0
