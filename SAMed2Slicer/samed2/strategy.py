"""The propagation strategies (their names: samed2.choices.STRATEGIES) and which one a session uses.

- "track": SAM 2's memory tracking (conditioning frames, recent memories, object pointers);
- "box-chain": SAMed-2's image mode, each slice prompted with the box of the previous slice's mask,
  with the confidence bank's memory;
- "hybrid": memory tracking with the bank's memory beside the frame memories.

The default is the winner of the evaluation harness on the test-trained model (docs/ACCURACY.md):
box-chain where a confidence bank is loaded, track (the only strategy without one) otherwise.
"""
from typing import Optional

NEEDS_BANK = ("box-chain", "hybrid")
DEFAULT_WITH_BANK = "box-chain"
DEFAULT_WITHOUT_BANK = "track"


def resolve(strategy: Optional[str], has_bank: bool) -> str:
    """The strategy asked for, or the default for a session with or without a bank."""
    return strategy or (DEFAULT_WITH_BANK if has_bank else DEFAULT_WITHOUT_BANK)
