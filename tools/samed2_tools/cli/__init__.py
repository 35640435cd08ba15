"""The `samed2` command line. Each sub-command lives in its own module with a `register(subparsers)`."""
import argparse
import importlib
import logging
import sys
import warnings

# module name -> imported lazily so `samed2 --help` stays fast and light
_COMMAND_MODULES = ["weights", "dicomseg", "segment", "demo", "bank", "train", "eval", "bench", "web"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samed2", description="SAMed-2 / SAM 2 segmentation engine")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(f"samed2_tools.cli.{name}").register(sub)
    return parser


# Options whose values are coordinate lists that may start with '-' (argparse would read an option).
_COORDINATE_OPTIONS = ("--point", "--box")


def _attach_coordinate_values(argv):
    """`--point -12,3,4` -> `--point=-12,3,4`."""
    out, values = [], iter(argv)
    for arg in values:
        out.append(f"{arg}={next(values, '')}" if arg in _COORDINATE_OPTIONS else arg)
    return out


def _log_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as log lines ("WARNING: ..."), which progress bars know how to print around."""
    logging.getLogger("samed2").warning("%s", message)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(_attach_coordinate_values(argv))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    for chatty in ("highdicom", "dicomweb_client"):  # a line per module copied, per instance fetched
        logging.getLogger(chatty).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    warnings.showwarning = _log_warning
    from samed2.errors import Samed2Error

    try:
        return args.func(args) or 0
    except Samed2Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

