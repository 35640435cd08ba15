"""What fine-tuning MedSAM-Lite on 4 corrected slices gains, and what it forgets (docs/TRAINING.md).

    python -m samed2_tools.finetune_gain --out runs/gain [--cache-dir DIR]   # medsam-lite must be in the cache

For each experiment: MedSAM-Lite's per-slice box Dice (a tight box from the label on every slice that
holds the structure) before and after `samed2 train --init medsam-lite --slices ...` on 4 slices of
one structure of one scan, on (a) that structure's other slices, (b) the same structure on another
scan of the same kind, (c) another structure (forgetting). The 4 slices are spread evenly inside the
structure's extent; the training settings are fixed below, chosen before any result was seen.
Prints a JSON report and writes it to OUT/gain.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TUNED_SLICES = 4
SETTINGS = {"steps": 100, "batch_size": 2, "lr": 1e-4, "warmup_steps": 10, "seed": 0}


@dataclass(frozen=True)
class Scan:
    name: str
    image: str
    label: str


@dataclass(frozen=True)
class Experiment:
    name: str
    tuned: Scan
    structure: Optional[int]  # None: the base model's worst of CT_CANDIDATES on the tuned scan
    other_scans: tuple  # Scans with the same structure
    other_structures: tuple  # label values on the tuned scan and the other scans (forgetting)


def experiments(data: Path) -> list[Experiment]:
    ct_a = Scan("example_ct_sm", str(data / "totalseg/example_ct_sm.nii.gz"), str(data / "totalseg/example_seg.nii.gz"))
    ct_b = Scan("example_ct_dicom", str(data / "totalseg/example_ct_dicom"),
                str(data / "totalseg/example_seg_dicom.nii.gz"))
    mr = Scan("brain1", str(data / "pyradiomics/brain1_image.nrrd"), str(data / "pyradiomics/brain1_label.nrrd"))
    return [Experiment("CT", ct_a, None, (ct_b,), (5,)),
            Experiment("MR", mr, 1, (), ())]


CT_CANDIDATES = {1: "spleen", 5: "liver", 6: "stomach", 20: "colon", 52: "aorta", 63: "inferior vena cava",
                 64: "portal and splenic vein"}  # organs on >= 10 slices of both CT scans


def tuned_slices(present: np.ndarray) -> list[int]:
    """TUNED_SLICES slices spread evenly inside the structure's extent (its ends excluded)."""
    indices = np.nonzero(present)[0]
    spots = np.linspace(indices.min(), indices.max(), TUNED_SLICES + 2)[1:-1].round().astype(int)
    return sorted({int(indices[np.abs(indices - s).argmin()]) for s in spots})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache-dir")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--num-threads", type=int, default=0)
    parser.add_argument("--only", help="run only this experiment (CT or MR)")
    args = parser.parse_args(argv)
    import torch

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    report = {"host": _host(), "settings": SETTINGS, "experiments": []}
    for experiment in experiments(Path(args.data)):
        if args.only and experiment.name != args.only:
            continue
        report["experiments"].append(_run(experiment, Path(args.out), args.cache_dir))
        print(json.dumps(report["experiments"][-1], indent=1), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"gain{'-' + args.only if args.only else ''}.json").write_text(json.dumps(report, indent=1))
    return 0


def _run(experiment: Experiment, out: Path, cache_dir) -> dict:
    from samed2.weights import build_and_load, load_model
    from samed2_tools.train import TrainOptions, train
    from samed2_tools.train.lite import EmbeddingCache

    base = load_model("medsam-lite", cache_dir)
    embeddings = EmbeddingCache(base, keep=True)  # the encoder does not train: its embeddings serve both models
    tuned = _load(experiment.tuned)
    structure = experiment.structure if experiment.structure is not None else _worst(base, embeddings, tuned)
    slices = tuned_slices(tuned.slices_with(structure))
    checks = _checks(experiment, structure, slices)
    before = {name: _dice(base, embeddings, case, value, skip) for name, (case, value, skip) in checks.items()}
    run_dir = out / f"{experiment.name}-{experiment.tuned.name}-{structure}"
    csv = out / f"{run_dir.name}.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    csv.write_text(f"image,label\n{experiment.tuned.image},{experiment.tuned.label}\n")
    start, cpu_start = time.perf_counter(), time.process_time()
    result = train(TrainOptions(data=str(csv), init="medsam-lite", cache_dir=cache_dir, out=str(run_dir),
                                labels=[str(structure)], slices=slices, val_fraction=0.0, progress=False,
                                **SETTINGS))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    finetuned = build_and_load(result.config, result.weights)
    after = {name: _dice(finetuned, embeddings, case, value, skip) for name, (case, value, skip) in checks.items()}
    return {"experiment": experiment.name, "scan": experiment.tuned.name, "structure": structure,
            "tuned_slices": slices, "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1),
            "load_average": os.getloadavg()[0],
            "checks": {name: {"slices": len(before[name]), "before": _mean(before[name]), "after": _mean(after[name])}
                       for name in checks}}


def _checks(experiment: Experiment, structure: int, slices: list) -> dict:
    """name -> (case, label value, slices to skip)."""
    tuned = _load(experiment.tuned)
    checks = {f"{experiment.tuned.name} label {structure}, other slices": (tuned, structure, set(slices))}
    for scan in experiment.other_scans:
        checks[f"{scan.name} label {structure}"] = (_load(scan), structure, set())
    for value in experiment.other_structures:
        for scan in (experiment.tuned, *experiment.other_scans):
            checks[f"{scan.name} label {value} (forgetting)"] = (_load(scan), value, set())
    return checks


_LOADED = {}


def _load(scan: Scan):
    from samed2_tools.cases import Case
    from samed2_tools.train.volumes import load_case_volume

    if scan.name not in _LOADED:
        _LOADED[scan.name] = load_case_volume(Case(scan.name, Path(scan.image), Path(scan.label)), 2, "auto")
    return _LOADED[scan.name]


def _worst(model, embeddings, case) -> int:
    scores = {value: _mean(_dice(model, embeddings, case, value, set())) for value in CT_CANDIDATES}
    print("base per-slice box Dice on", case.name, json.dumps(scores), flush=True)
    return min(scores, key=scores.get)


def _dice(model, embeddings, case, value: int, skip: set) -> list:
    from samed2_tools.train.lite import slice_box_dice

    dices = []
    for k in np.nonzero(case.slices_with(value))[0]:
        if int(k) not in skip:
            dices.append(slice_box_dice(model, embeddings(case, int(k)), case.object_slices([int(k)], value)[0]))
    return dices


def _mean(values: list) -> float:
    return round(float(np.mean(values)), 3) if values else float("nan")


def _host() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}


if __name__ == "__main__":
    raise SystemExit(main())
