"""`python -m samed2_tools.train ...` (what `torchrun --nproc-per-node N -m samed2_tools.train ...` runs): same options as `samed2 train`."""
import sys

from samed2_tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
