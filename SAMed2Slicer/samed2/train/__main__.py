"""`python -m samed2.train ...` (what `torchrun --nproc-per-node N -m samed2.train ...` runs): same options as `samed2 train`."""
import sys

from samed2.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
