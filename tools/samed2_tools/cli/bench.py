"""`samed2 bench`: the performance targets (docs/BENCHMARKS.md) as a table of ratios (and JSON)."""
import json
import sys
from pathlib import Path

from samed2_tools.cli.options import add_backend_option, add_precision_option


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark clicks, encoding, propagation, bank and memory against references",
                       description="Times our paths against the SAMed-2 reference flow and Meta's sam2 (when "
                                   "installed) on the same machine, weights and inputs; prints a table of "
                                   "ratios with targets. The full run takes up to 10 minutes on an idle 2-core CPU.")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    add_precision_option(p)
    add_backend_option(p)
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--quick", action="store_true",
                   help="small images and few frames (about a minute): checks the harness, not the targets")
    p.set_defaults(func=run)


def run(args) -> int:
    from samed2.files import atomic_write, check_output_path
    from samed2_tools.bench import FULL, QUICK, format_table
    from samed2_tools.bench import run as run_bench

    if args.json:
        check_output_path(args.json, (".json",))
    report = run_bench(QUICK if args.quick else FULL, args.device, args.precision,
                       log=lambda m: print(f"bench: {m}", file=sys.stderr), backend=args.backend)
    report["quick"] = args.quick
    print(format_table(report))
    if args.json:
        text = json.dumps(report, indent=2).encode("utf-8")
        atomic_write(args.json, lambda stream: stream.write(text))
        print(f"wrote {args.json}")
    return 0
