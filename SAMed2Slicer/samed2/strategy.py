"""Propagation strategies (DESIGN.md section 5), importable without torch for command lines and GUIs.

- "track": SAM 2's memory tracking (conditioning frames, recent memories, object pointers);
- "box-chain": SAMed-2's image mode, each slice prompted with the box of the previous slice's mask,
  with the confidence bank's memory;
- "hybrid": memory tracking with the bank's memory beside the frame memories.

DEFAULT is the winner of the evaluation harness on the test-trained model (README, Evaluation).
"""
STRATEGIES = ("track", "box-chain", "hybrid")
NEEDS_BANK = ("box-chain", "hybrid")
DEFAULT = "track"
