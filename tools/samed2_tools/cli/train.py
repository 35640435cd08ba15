"""`samed2 train`: fine-tune a model on volumes with label maps
(multi-GPU: `torchrun ... -m samed2_tools.cli train`)."""
import argparse

EPILOG = """\
data layout (--data):
  a CSV with a header and columns image,label[,split[,case]] (split: train or val; paths relative
  to the CSV), or a folder DIR/imagesTr/<case>.nii.gz (or _0000.nii.gz, .nrrd, .mha, or a DICOM
  series folder <case>/) with DIR/labelsTr/<case>.nii.gz (.nrrd, .seg.nrrd), optionally
  DIR/imagesVal/ + DIR/labelsVal/. Label maps on another grid are resampled onto the image grid.

--init: a cached checkpoint name (samed2 weights list), a checkpoint file (+ --config, or its
  <stem>.config.json beside it), a config name for random initialisation, or random:CONFIG.

outputs in --out: checkpoints/last.pt (resume with --resume), metrics.csv, metrics.png, and at the
  end NAME.pt ({"model": state_dict}), NAME.config.json and NAME.bank.safetensors; load them with
  `samed2 weights import NAME.pt --config NAME.config.json`.

MedSAM-Lite (--init medsam-lite): single slices with jittered boxes; the prompt encoder and mask
  decoder train by default, on image embeddings computed once per slice. --slices K1,K2 trains on
  the slices you corrected only; --register NAME puts the result into the weights cache.

multi-GPU: torchrun --nproc-per-node N -m samed2_tools.cli train --data ... (same options).
"""


def register(subparsers) -> None:
    from samed2_tools.train.options import add_arguments

    parser = subparsers.add_parser("train", help="fine-tune on volumes with label maps",
                                   description=__doc__, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=_train)


def _train(args) -> int:
    from samed2.errors import InputError
    from samed2_tools.train import train
    from samed2_tools.train.options import options_from_args

    options = options_from_args(args)
    if not options.resume and not (options.data and options.init and options.out):
        raise InputError("samed2 train needs --data, --init and --out (or --resume with --out)")
    result = train(options)
    if result.weights is not None:
        print(f"exported {result.weights}")
        if result.bank is not None:
            print(f"memory bank {result.bank}")
        if options.register:
            print(f"registered {options.register}: use it with --model {options.register}")
    return 0
