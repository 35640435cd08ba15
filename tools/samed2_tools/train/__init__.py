"""Headless fine-tuning of SAM 2 / SAMed-2 models on labelled volumes.

`samed2 train ...` in one process, `torchrun --nproc-per-node N -m samed2_tools.cli train ...` on N GPUs (or
CPU processes with gloo). From Python::

    from samed2_tools.train import TrainOptions, train
    result = train(TrainOptions(data="cases.csv", init="samed2", out="runs/liver", labels=["liver"]))
    result.weights  # runs/liver/liver.pt, {"model": state_dict}: `samed2 weights import` accepts it
"""
from samed2_tools.train.loop import TrainResult, train
from samed2_tools.train.options import TrainOptions

__all__ = ["TrainOptions", "TrainResult", "train"]
