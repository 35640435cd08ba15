"""Headless fine-tuning of SAM 2 / SAMed-2 models on labelled volumes.

`samed2 train ...` in one process, `torchrun --nproc-per-node N -m samed2.train ...` on N GPUs (or
CPU processes with gloo). From Python::

    from samed2.train import TrainOptions, train
    result = train(TrainOptions(data="cases.csv", init="samed2", out="runs/liver", labels=["liver"]))
    result.weights  # runs/liver/liver.pt, {"model": state_dict}: `samed2 weights import` accepts it
"""
from samed2.train.loop import TrainResult, train
from samed2.train.options import TrainOptions

__all__ = ["TrainOptions", "TrainResult", "train"]
