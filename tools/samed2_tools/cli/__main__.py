"""`python -m samed2_tools.cli ...` is `samed2 ...`; `torchrun --nproc-per-node N -m samed2_tools.cli train ...`
runs training on N processes."""
import sys

from samed2_tools.cli import main

sys.exit(main())
