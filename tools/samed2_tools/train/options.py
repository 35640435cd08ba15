"""Every setting of a training run, its defaults, checks, and the command-line options that set it.

The options are stored in each checkpoint, so `--resume` continues with exactly the settings the
run started with (only the runtime options in RUNTIME_FIELDS may change on resume).
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from samed2.errors import InputError

TRAINABLE_PARTS = ("adapters", "image_encoder", "prompt_encoder", "mask_decoder", "memory")
DEFAULT_PARTS = ("adapters", "mask_decoder", "memory")  # SAM 2 / SAMed-2
LITE_DEFAULT_PARTS = ("prompt_encoder", "mask_decoder")  # MedSAM-Lite: its image embeddings are computed once
MIN_SLICES = 2  # --slices: fewer corrected slices teach nothing that generalises
RUNTIME_FIELDS = ("device", "num_threads", "progress", "resume", "deterministic")
REFERENCE_BOX_JITTER = 20.0  # the reference's box jitter, in pixels of a 1024 input


@dataclass
class TrainOptions:
    # data
    data: str = ""
    out: str = ""
    labels: list = field(default_factory=list)  # values or names; empty = every label
    axis: int = 2
    preset: str = "auto"
    val_fraction: float = 0.2
    holdout_every: int = 0  # > 0: slices k with k % holdout_every == holdout_offset are held out for validation
    holdout_offset: int = 0
    slices: list = field(default_factory=list)  # only these slice indices train (the slices a user corrected)
    # model
    init: str = ""
    config: Optional[str] = None
    cache_dir: Optional[str] = None
    train_parts: list = field(default_factory=list)  # empty: the model's default parts
    name: str = ""
    register: str = ""  # import the result into the weights cache under this name
    replace: bool = False  # --register may replace an imported checkpoint of that name
    # sampling, prompts, augmentation
    clip_length: int = 4
    batch_size: int = 1
    max_objects: int = 3
    end_repeat: int = 3
    box_prob: float = 0.7
    correct_prob: float = 0.3
    image_mode_prob: float = 0.25
    correct_rounds: int = 2
    box_jitter: float = REFERENCE_BOX_JITTER
    augment: bool = False
    # loss
    dice_weight: float = 1.0
    focal_weight: float = 0.5
    iou_weight: float = 0.5
    score_weight: float = 1.0
    # optimisation
    steps: int = 1000
    lr: float = 1e-4
    lr_scales: dict = field(default_factory=dict)  # part name or parameter-name prefix -> learning-rate factor
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    accumulate: int = 1
    amp: str = "auto"
    seed: int = 0
    # outputs
    bank_size: int = 640
    bank_min_iou: float = 0.9
    bank_prob: float = 0.5
    checkpoint_every: int = 100
    log_every: int = 10
    val_every: int = 0  # steps between validations; 0 = once per epoch
    # runtime
    device: str = "auto"
    num_threads: int = 0
    progress: bool = True
    resume: bool = False
    deterministic: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainOptions":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def check(self) -> "TrainOptions":
        """InputError for settings that cannot work; returns self."""
        _require(self.axis in (0, 1, 2), f"--axis must be 0 (i), 1 (j) or 2 (k), got {self.axis}")
        _require(1 <= self.clip_length <= 8, f"--clip-length must be 1 to 8 slices, got {self.clip_length}")
        _require(min(self.batch_size, self.max_objects, self.accumulate, self.end_repeat) >= 1,
                 "--batch-size, --max-objects, --accumulate and --end-repeat must be at least 1")
        _require(self.steps >= 1, f"--steps must be at least 1, got {self.steps}")
        _require(0.0 <= self.val_fraction < 1.0, f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        _require(self.holdout_every == 0 or self.holdout_every >= 2, "--holdout-every must be 0 (off) or >= 2")
        _require(self.amp in ("auto", "on", "off"), f"--amp must be auto, on or off, got {self.amp!r}")
        unknown = sorted(set(self.train_parts) - {"all"} - set(TRAINABLE_PARTS))
        _require(not unknown, f"unknown --train part(s) {unknown}; choose from {', '.join(TRAINABLE_PARTS)} or all")
        _require(self.bank_size >= 0, "--bank-size must be >= 0 (0: no bank)")
        _require(not self.slices or len(set(self.slices)) >= MIN_SLICES,
                 f"--slices lists {len(set(self.slices))} slice(s); fine-tuning needs at least {MIN_SLICES} "
                 "corrected slices")
        _require(all(k >= 0 for k in self.slices), f"--slices must be slice indices >= 0, got {self.slices}")
        return self

    def parts_for(self, model) -> list:
        """The parts to train: --train, else the model's default."""
        if self.train_parts:
            return list(self.train_parts)
        return list(DEFAULT_PARTS if getattr(model, "has_memory", True) else LITE_DEFAULT_PARTS)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `samed2 train` / `python -m samed2_tools.cli train` options."""
    d = TrainOptions()
    data = parser.add_argument_group("data")
    data.add_argument("--data", help="a CSV (columns image,label[,split]) or a folder with imagesTr/ and labelsTr/ "
                                     "(see `samed2 train --help` epilog)")
    data.add_argument("--labels", type=_comma_list, default=[], metavar="L1,L2",
                      help="labels to train on, by value (5) or name (liver); default: every label")
    data.add_argument("--axis", type=_axis, default=d.axis, help="slicing axis: i, j, k or 0, 1, 2 (default k, axial)")
    data.add_argument("--preset", default=d.preset, help="intensity preset as at inference (default auto)")
    data.add_argument("--val-fraction", type=float, default=d.val_fraction,
                      help="share of cases held out for validation when no split is given (default 0.2)")
    data.add_argument("--holdout-every", type=int, default=d.holdout_every, metavar="N",
                      help="also hold out every N-th slice of each training case for validation (0: off)")
    data.add_argument("--holdout-offset", type=int, default=d.holdout_offset, metavar="R",
                      help="held-out slices are those with index %% N == R (default 0)")
    data.add_argument("--slices", type=_index_list, default=[], metavar="K1,K2",
                      help="train only on these slices (indices along --axis, e.g. the slices you corrected: "
                           "40,44,48-50) of every training case; the case's other slices validate")
    model = parser.add_argument_group("model")
    model.add_argument("--init", help="checkpoint name from the weights cache, a checkpoint file (+ --config), "
                                      "a config name (random init) or random:CONFIG")
    model.add_argument("--config", help="model config name or JSON file, for --init FILE or random init")
    model.add_argument("--cache-dir", help="weights cache folder (default: $SAMED2_CACHE or ~/.cache/samed2)")
    model.add_argument("--train", dest="train_parts", type=_comma_list, default=[],
                       metavar="PARTS", help=f"parts to train: {','.join(TRAINABLE_PARTS)} or all "
                                             f"(default {','.join(DEFAULT_PARTS)}; MedSAM-Lite: "
                                             f"{','.join(LITE_DEFAULT_PARTS)})")
    model.add_argument("--name", default="", help="name of the exported checkpoint (default: the run folder's name)")
    model.add_argument("--register", default="", metavar="NAME",
                       help="import the result into the weights cache as NAME (then --model NAME works everywhere)")
    model.add_argument("--replace", action="store_true",
                       help="--register may replace an earlier imported checkpoint of the same name")
    sample = parser.add_argument_group("sampling and prompts")
    sample.add_argument("--clip-length", type=int, default=d.clip_length,
                        help="consecutive slices per clip; the first is prompted, the rest tracked (default 4)")
    sample.add_argument("--batch-size", type=int, default=d.batch_size, help="clips per step and process (default 1)")
    sample.add_argument("--max-objects", type=int, default=d.max_objects, help="labels trained per clip (default 3)")
    sample.add_argument("--end-repeat", type=int, default=d.end_repeat,
                        help="times per epoch a clip in which a label ends is drawn (default 3)")
    sample.add_argument("--box-prob", type=float, default=d.box_prob, help="share of box prompts, else clicks")
    sample.add_argument("--correct-prob", type=float, default=d.correct_prob,
                        help="share of prompted slices that get corrective clicks (default 0.3)")
    sample.add_argument("--image-mode-prob", type=float, default=d.image_mode_prob,
                        help="share of clips whose every slice is prompted on its own, without memory (default 0.25)")
    sample.add_argument("--correct-rounds", type=int, default=d.correct_rounds, help="corrective clicks per slice")
    sample.add_argument("--box-jitter", type=float, default=d.box_jitter,
                        help="maximum box jitter per side in pixels at 1024 input, scaled to the model (default 20)")
    sample.add_argument("--augment", action="store_true", help="random flips, intensity jitter and small affine")
    loss = parser.add_argument_group("loss")
    for name, value in (("dice", d.dice_weight), ("focal", d.focal_weight), ("iou", d.iou_weight),
                        ("score", d.score_weight)):
        loss.add_argument(f"--{name}-weight", type=float, default=value)
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--steps", type=int, default=d.steps, help="optimizer steps in all (default 1000)")
    optim.add_argument("--lr", type=float, default=d.lr, help="peak learning rate of AdamW (default 1e-4)")
    optim.add_argument("--lr-scale", dest="lr_scales", type=_scales, default={}, metavar="PART=F,...",
                       help="learning-rate factors by part or parameter-name prefix, e.g. "
                            "memory=10,memory_attention.norm=50")
    optim.add_argument("--weight-decay", type=float, default=d.weight_decay)
    optim.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up, then cosine decay")
    optim.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="final lr / peak lr")
    optim.add_argument("--grad-clip", type=float, default=d.grad_clip, help="gradient norm clip (0: off)")
    optim.add_argument("--accumulate", type=int, default=d.accumulate, help="gradient accumulation steps")
    optim.add_argument("--amp", default=d.amp, choices=["auto", "on", "off"],
                       help="bf16 autocast; auto = on CUDA only (CPU always trains in float32)")
    optim.add_argument("--seed", type=int, default=d.seed)
    out = parser.add_argument_group("outputs")
    out.add_argument("--out", help="run folder: checkpoints, metrics.csv, metrics.png and the exported model")
    out.add_argument("--bank-size", type=int, default=d.bank_size, help="confidence memory bank entries (0: none)")
    out.add_argument("--bank-min-iou", type=float, default=d.bank_min_iou,
                     help="predicted IoU a training prediction needs to enter the bank (default 0.9)")
    out.add_argument("--bank-prob", type=float, default=d.bank_prob,
                     help="share of clips whose prompted slices attend to the bank's best entry (default 0.5)")
    out.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints")
    out.add_argument("--log-every", type=int, default=d.log_every, help="steps between metrics.csv rows")
    out.add_argument("--val-every", type=int, default=d.val_every, help="steps between validations (0: per epoch)")
    run = parser.add_argument_group("runtime")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    run.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N or mps (default auto)")
    run.add_argument("--num-threads", type=int, default=d.num_threads, help="CPU threads (0: torch's default)")
    run.add_argument("--deterministic", action="store_true",
                     help="torch.use_deterministic_algorithms (bit-exact resume; may be slower)")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    values = {f.name: getattr(args, f.name) for f in fields(TrainOptions) if getattr(args, f.name, None) is not None}
    return TrainOptions.from_dict(values)


def _comma_list(text: str) -> list:
    return [item.strip() for item in text.split(",") if item.strip()]


def _index_list(text: str) -> list:
    """Slice indices from "40,44,48-50"."""
    indices = []
    for item in _comma_list(text):
        first, dash, last = item.partition("-")
        try:
            indices += list(range(int(first), int(last) + 1)) if dash else [int(first)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected slice indices like 40,44,48-50, got {item!r}") from None
    return sorted(set(indices))


def _scales(text: str) -> dict:
    scales = {}
    for item in _comma_list(text):
        part, separator, factor = item.partition("=")
        try:
            scales[part.strip()] = float(factor)
        except ValueError:
            separator = ""
        if not separator:
            raise argparse.ArgumentTypeError(f"expected PART=FACTOR, e.g. memory=10, got {item!r}")
    return scales


def _axis(text: str) -> int:
    names = {"i": 0, "j": 1, "k": 2, "0": 0, "1": 1, "2": 2}
    if text.lower() not in names:
        raise argparse.ArgumentTypeError(f"axis must be i, j, k, 0, 1 or 2, got {text!r}")
    return names[text.lower()]
