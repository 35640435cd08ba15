"""Options that several sub-commands share: the model and how it runs."""
import json
import sys
from pathlib import Path

from samed2.choices import BACKENDS, DEVICES, ENGINE_PRESETS, PRECISIONS, STRATEGIES
from samed2.errors import InputError


def add_precision_option(parser) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="model arithmetic: bf16 autocast or fp32; auto = bf16 where the device computes it "
                             "natively and a short measurement finds it faster, else fp32 (default)")


def add_dicomweb_options(parser) -> None:
    parser.add_argument("--ca-bundle", metavar="FILE.pem",
                        help="CA certificates to verify a DICOMweb server's TLS certificate with (default: the "
                             "system's); credentials come from $SAMED2_DICOMWEB_TOKEN, $SAMED2_DICOMWEB_USER and "
                             "$SAMED2_DICOMWEB_PASSWORD or ~/.netrc, never from the command line")


def add_backend_option(parser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="what runs the image encoder on the CPU: torch, or OpenVINO (pip install 'samed2[cpu]'); "
                             "auto = OpenVINO where it is installed and measures faster at first use, else torch "
                             "(default). Converted encoders are cached beside the weights")


def add_model_options(parser) -> None:
    """--model/--config/--bank, --strategy, --preset, --device, --precision, --backend, --cache-dir."""
    parser.add_argument("--model", help="cached weights name (see `samed2 weights list`) or a checkpoint file; "
                                        "default: SAMed-2 when its weights are cached, else MedSAM-Lite")
    parser.add_argument("--config", help="model config name or JSON file, for a checkpoint file given to --model "
                                         "(default: samed2)")
    parser.add_argument("--bank", help="SAMed-2 confidence memory bank (.safetensors); needed by box-chain and hybrid")
    parser.add_argument("--strategy", choices=STRATEGIES,
                        help="propagation strategy (default: box-chain with --bank, else track; MedSAM-Lite: "
                             "box-chain only)")
    parser.add_argument("--preset", default="auto", choices=ENGINE_PRESETS, help="intensity preset")
    parser.add_argument("--device", default="auto", help=f"{', '.join(DEVICES)} or cuda:N")
    add_precision_option(parser)
    add_backend_option(parser)
    parser.add_argument("--cache-dir", help="weights cache (default: $SAMED2_CACHE or ~/.cache/samed2)")


def model_and_bank(args):
    """The model named by --model (and --config), and the bank of --bank (or None)."""
    from samed2 import weights
    from samed2.bank import ConfidenceBank

    if args.model is None:
        args.model = weights.best_model(args.cache_dir)
        print(f"model: {args.model} (the best one cached; choose with --model)", file=sys.stderr)
    if Path(args.model).is_file():
        model = weights.build_and_load(_config(args.config or "samed2"), args.model)
    else:
        model = weights.load_model(args.model, cache_dir=args.cache_dir)
    bank = ConfidenceBank.load(args.bank) if args.bank else None
    return model, bank


def _config(text: str):
    """A config name, or a JSON file holding a config dict."""
    if Path(text).is_file():
        try:
            return json.loads(Path(text).read_text())
        except ValueError as exc:
            raise InputError(f"--config {text} is not a JSON model config: {exc}") from None
    return text
