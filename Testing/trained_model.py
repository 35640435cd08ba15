"""The test-trained model: a shrunk SAMed-2 trained by `samed2 train` on the shared CT, committed as a test asset.

Random weights give meaningless masks, and no real SAMed-2 weights can be downloaded on the test
machines, so behavioural tests use a model trained here: a shrunk SAMed-2 config (Hiera with temporal
adapters, 128 px input, 4.4 M parameters, every part trainable from random init), trained with the
project's own recipe (`samed2_tools.train`) on totalseg/example_ct_sm.nii.gz + example_seg.nii.gz (liver
and both kidneys), axial slices, every 5th slice held out (k % 5 == 2) for measurement.

Training is deterministic on one machine but not across CPUs (a different CPU is a different seed),
so the behavioural tests load the weights and bank of one run committed under Testing/fixture/
(float16 weights, the run's bank as written), never a run trained where the tests run. The recipe is
still exercised in every test run: `test_train.py` trains it afresh and checks only the quality
bounds that every training seed tried reaches (docs/TRAINING.md, "The test-trained model").

Regenerate the committed asset (about 8 minutes on 2 CPU cores; one torch thread is as fast as two
for a model this small)::

    .venv/bin/python Testing/trained_model.py --seed 2 --out runs/fixture --asset Testing/fixture

Use it from a test module (the `trained_model` fixture is in Testing/conftest.py)::

    from trained_model import build_trained_model

    def test_something(trained_model):
        model = build_trained_model(trained_model)

`SAMED2_FIXTURE=DIR` points the fixture at another asset or `samed2 train` run folder (used to check
that the behavioural tests hold for runs trained with other seeds).
"""
from __future__ import annotations

import argparse
import copy
import fcntl
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import samed2
from samed2.model import SAM2Model, build_model, get_config
from samed2.weights import load_weights

REPO = Path(__file__).resolve().parents[1]
ASSET = Path(__file__).resolve().parent / "fixture"
DATA = REPO.parent / "shared" / "data" / "totalseg"
IMAGE, LABELS = DATA / "example_ct_sm.nii.gz", DATA / "example_seg.nii.gz"
LIVER, RIGHT_KIDNEY, LEFT_KIDNEY = 5, 2, 3
TRAINED_LABELS = [LIVER, RIGHT_KIDNEY, LEFT_KIDNEY]
HOLDOUT_EVERY, HOLDOUT_OFFSET = 5, 2
NAME = "fixture"


def shrunk_samed2_config(image_size: int, embed_dim: int, stages: list, d_model: int, mem_dim: int,
                         memory_layers: int, feedforward: int, dropout: float = 0.1) -> dict:
    """SAMed-2's config (SAM 2.0 Hiera with temporal adapters) with every dimension shrunk."""
    config = get_config("samed2")
    model = config["model"]
    model["image_size"] = image_size
    ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
    model["image_encoder"]["trunk"].update(
        embed_dim=embed_dim, num_heads=1, stages=list(stages), global_att_blocks=[ends[2]],
        window_spec=[8, 4, 4, 4], window_pos_embed_bkg_spatial_size=[4, 4], temporal_adapter=True,
        fusion_blocks=False)
    neck = model["image_encoder"]["neck"]
    neck.update(d_model=d_model, backbone_channel_list=[embed_dim * 8, embed_dim * 4, embed_dim * 2, embed_dim])
    neck["position_encoding"]["num_pos_feats"] = d_model
    feat = image_size // 16
    attention = model["memory_attention"]
    attention.update(d_model=d_model, num_layers=memory_layers)
    layer = attention["layer"]
    layer.update(d_model=d_model, dim_feedforward=feedforward, dropout=dropout)
    layer["self_attention"].update(embedding_dim=d_model, feat_sizes=[feat, feat], dropout=dropout)
    layer["cross_attention"].update(embedding_dim=d_model, feat_sizes=[feat, feat], kv_in_dim=mem_dim,
                                    dropout=dropout)
    encoder = model["memory_encoder"]
    encoder.update(out_dim=mem_dim, in_dim=d_model)
    encoder["position_encoding"]["num_pos_feats"] = mem_dim
    encoder["fuser"]["layer"]["dim"] = d_model
    return config


# The recipe, found by measurement (docs/TRAINING.md, "The test-trained model"): half the clips in image mode
# (every slice prompted: the box path), half tracked (the memory path); two clips per step; the
# memory encoder's mask path and the memory attention learn 30x and 2x faster than the rest, without
# which the memory features of different objects stay nearly equal and tracking follows the liver
# whatever object was prompted; clips where an object ends are not repeated (end_repeat 1).
FIXTURE_CONFIG = shrunk_samed2_config(image_size=128, embed_dim=32, stages=[1, 2, 3, 1], d_model=128, mem_dim=64,
                                      memory_layers=2, feedforward=512, dropout=0.0)
FIXTURE_OPTIONS = dict(
    labels=[str(v) for v in TRAINED_LABELS], axis=2, holdout_every=HOLDOUT_EVERY, holdout_offset=HOLDOUT_OFFSET,
    train_parts=["all"], clip_length=4, batch_size=2, max_objects=3, steps=800, end_repeat=1, lr=1e-3,
    warmup_steps=30,
    lr_scales={"memory_encoder.mask_downsampler": 30.0, "memory_attention": 2.0},
    box_prob=0.8, correct_prob=0.1, image_mode_prob=0.5, bank_size=64, bank_min_iou=0.0, checkpoint_every=100,
    log_every=25, val_every=100, seed=0, name=NAME, progress=False,
)


@dataclass(frozen=True)
class TrainedModel:
    weights: Path  # a state dict: float16 safetensors (the asset) or {"model": state_dict} (a training run)
    config: dict  # {"model": {...}}
    bank: Path  # the confidence bank built while training (safetensors)
    held_out: list  # axial slice indices never trained on


def build_trained_model(trained: TrainedModel) -> SAM2Model:
    """A fresh float32 model with the trained weights (CPU, eval mode)."""
    model = build_model(copy.deepcopy(trained.config))
    return load_weights(model, trained.weights).eval()


def held_out_slices(num_slices: int = 30) -> list[int]:
    return [k for k in range(num_slices) if k % HOLDOUT_EVERY == HOLDOUT_OFFSET]


def load_trained(folder: Path) -> TrainedModel:
    """The model in an asset folder (fixture.safetensors) or a `samed2 train` run folder (fixture.pt)."""
    weights = folder / f"{NAME}.safetensors"
    if not weights.is_file():
        weights = folder / f"{NAME}.pt"
    config = json.loads((folder / f"{NAME}.config.json").read_text())
    return TrainedModel(weights, config, folder / f"{NAME}.bank.safetensors", held_out_slices())


# ---------------------------------------------------------------- training the recipe


def train_fixture(run_dir: Path, seed: int = 0, num_threads: int = 1) -> Path:
    """Train the recipe into `run_dir` with `samed2_tools.train` (resuming an interrupted run); returns run_dir."""
    from samed2_tools.train import TrainOptions, train
    from samed2_tools.train.checkpoint import checkpoint_path

    run_dir.mkdir(parents=True, exist_ok=True)
    cases = run_dir / "cases.csv"
    cases.write_text(f"image,label\n{IMAGE},{LABELS}\n")
    config_file = run_dir / "fixture-config.json"
    config_file.write_text(json.dumps(FIXTURE_CONFIG))
    options = {**FIXTURE_OPTIONS, "seed": seed}
    start = time.perf_counter()
    train(TrainOptions(data=str(cases), init=f"random:{config_file}", out=str(run_dir),
                       resume=checkpoint_path(run_dir).exists(), num_threads=num_threads, device="cpu", **options))
    (run_dir / "DONE.json").write_text(json.dumps({"seconds": time.perf_counter() - start, "seed": seed}))
    return run_dir


def fresh_run(seed: int = 0) -> Path:
    """A run of the recipe trained on this machine, cached by a hash of everything it depends on under
    $SAMED2_TEST_CACHE (else the git-ignored .cache/): a file lock makes concurrent sessions train once."""
    root = Path(os.environ.get("SAMED2_TEST_CACHE") or REPO / ".cache" / "test-models")
    run_dir = root / f"trained-{_recipe_hash(seed)}"
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run_dir / "DONE.json").exists():
            train_fixture(run_dir, seed)
    return run_dir


def _recipe_hash(seed: int) -> str:
    digest = hashlib.sha256()
    package = Path(samed2.__file__).parent
    sources = sorted((package / "train").glob("*.py")) + sorted((package / "model").glob("*.py"))
    for path in sources + [Path(__file__), IMAGE, LABELS]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(json.dumps([FIXTURE_CONFIG, FIXTURE_OPTIONS, seed], sort_keys=True).encode())
    digest.update(torch.__version__.encode())
    return digest.hexdigest()[:16]


def write_asset(run_dir: Path, asset: Path) -> None:
    """The run's weights as float16 safetensors, its config and bank, and where they came from."""
    from safetensors.torch import save_file

    from samed2.files import atomic_output

    state = torch.load(run_dir / f"{NAME}.pt", weights_only=True)["model"]
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    asset.mkdir(parents=True, exist_ok=True)
    with atomic_output(asset / f"{NAME}.safetensors") as temporary:
        save_file(half, str(temporary))
    for suffix in (".config.json", ".bank.safetensors"):
        (asset / f"{NAME}{suffix}").write_bytes((run_dir / f"{NAME}{suffix}").read_bytes())
    done = json.loads((run_dir / "DONE.json").read_text())
    header, *rows = (run_dir / "metrics.csv").read_text().splitlines()
    provenance = {"recipe": {**FIXTURE_OPTIONS, "seed": done["seed"]}, "training_seconds": round(done["seconds"]),
                  "torch": torch.__version__, "cpu": _cpu_model(),
                  "last_metrics": dict(zip(header.split(","), rows[-1].split(",")))}
    (asset / "PROVENANCE.json").write_text(json.dumps(provenance, indent=1) + "\n")


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the test-trained model's recipe and write the test asset.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="training run folder (resumed if interrupted)")
    parser.add_argument("--asset", type=Path, help="also write the float16 test asset here (e.g. Testing/fixture)")
    args = parser.parse_args()
    train_fixture(args.out, args.seed)
    if args.asset:
        write_asset(args.out, args.asset)


if __name__ == "__main__":
    main()
