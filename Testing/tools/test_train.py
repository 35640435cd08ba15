"""samed2 train: data discovery and geometry, prompts, checkpoints, exact resume after SIGKILL, DDP under
torchrun, the export `samed2 weights import` accepts, and the test-trained model's accuracy.

Runs use the shared abdominal CT (real data). The micro config trains in seconds and checks the
mechanics; the session's `trained_model` fixture checks that training produces a model that works.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from samed2.bank import ConfidenceBank
from samed2.choices import PropagationOptions
from samed2.errors import InputError, WeightsError
from samed2.model import build_model
from samed2.model_coords import logits_to_slice, mask_box, preprocess_slices, slice_box_to_model
from samed2.session import Session
from samed2.volume_files import load_volume
from samed2.weights import import_checkpoint, load_weights
from samed2_tools.cases import find_cases, split_cases
from samed2_tools.cli import main as cli_main
from samed2_tools.train.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from samed2_tools.train.options import DEFAULT_PARTS
from samed2_tools.train.prompts import PromptSet, corrective_click, jittered_box, scaled_jitter
from samed2_tools.train.startpoint import initial_model, set_trainable
from samed2_tools.train.volumes import load_case_volume, resolve_labels

from trained_model import (
    IMAGE,
    LABELS,
    LEFT_KIDNEY,
    LIVER,
    RIGHT_KIDNEY,
    TRAINED_LABELS,
    build_trained_model,
    fresh_run,
    load_trained,
    shrunk_samed2_config,
)

MICRO_CONFIG = shrunk_samed2_config(image_size=64, embed_dim=16, stages=[1, 1, 2, 1], d_model=32, mem_dim=16,
                                    memory_layers=1, feedforward=64, dropout=0.0)


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def micro_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("micro")
    (folder / "micro.json").write_text(json.dumps(MICRO_CONFIG))
    (folder / "cases.csv").write_text(f"image,label\n{IMAGE},{LABELS}\n")
    return folder


def micro_args(files: Path, out: Path, steps: int, *extra: str) -> list:
    return ["--data", str(files / "cases.csv"), "--init", f"random:{files / 'micro.json'}", "--out", str(out),
            "--labels", "5,2,3", "--holdout-every", "5", "--clip-length", "3", "--steps", str(steps),
            "--warmup-steps", "2", "--lr", "2e-3", "--train", "all", "--seed", "3", "--device", "cpu",
            "--num-threads", "1", "--deterministic", "--no-progress", "--bank-size", "8", "--bank-min-iou", "0",
            "--log-every", "1", "--val-every", "4", *extra]


def run_module(args: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "samed2_tools.cli", "train", *args], capture_output=True, text=True,
                          timeout=300, **kwargs)


def exported_state(run_dir: Path) -> dict:
    return torch.load(run_dir / f"{run_dir.name}.pt", weights_only=True)["model"]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


# ---------------------------------------------------------------- cases, labels, geometry


def test_train_finds_cases_in_csv_and_folder_layout_and_splits_by_case(tmp_path):
    images, labels = tmp_path / "set" / "imagesTr", tmp_path / "set" / "labelsTr"
    images.mkdir(parents=True)
    labels.mkdir()
    for case in ("a", "b", "c", "d", "e"):
        (images / f"{case}_0000.nii.gz").symlink_to(IMAGE)
        (labels / f"{case}.nii.gz").symlink_to(LABELS)
    cases = find_cases(tmp_path / "set")
    assert [c.name for c in cases] == ["a", "b", "c", "d", "e"]
    train, val = split_cases(cases, 0.4, seed=1)
    assert len(val) == 2 and {c.name for c in train} | {c.name for c in val} == set("abcde")
    assert split_cases(cases, 0.4, seed=1) == (train, val)  # seeded

    (images / "f.nii.gz").symlink_to(IMAGE)
    with pytest.raises(InputError, match="no label map"):
        find_cases(tmp_path / "set")

    csv = tmp_path / "list.csv"
    csv.write_text("image,label,split\nset/imagesTr/a_0000.nii.gz,set/labelsTr/a.nii.gz,train\n"
                   "set/imagesTr/b_0000.nii.gz,set/labelsTr/b.nii.gz,val\n")
    train, val = split_cases(find_cases(csv), 0.0, seed=0)
    assert [c.name for c in train] == ["a_0000"] and [c.name for c in val] == ["b_0000"]


def test_train_resamples_a_label_map_stored_on_another_grid_in_physical_space(tmp_path):
    original = sitk.ReadImage(str(LABELS))
    # the same labels stored with the i axis reversed: same physical positions, mirrored array
    mirrored = sitk.Flip(original, [True, False, False], flipAboutOrigin=False)
    assert not np.array_equal(sitk.GetArrayFromImage(mirrored), sitk.GetArrayFromImage(original))
    sitk.WriteImage(mirrored, str(tmp_path / "mirrored.nii.gz"))
    case = find_cases(_csv(tmp_path, IMAGE, tmp_path / "mirrored.nii.gz"))[0]
    loaded = load_case_volume(case, axis=2, preset="auto")
    np.testing.assert_array_equal(loaded.labels, sitk.GetArrayFromImage(original))

    elsewhere = sitk.Image(original)
    elsewhere.SetOrigin([o + 2000.0 for o in original.GetOrigin()])
    sitk.WriteImage(elsewhere, str(tmp_path / "elsewhere.nii.gz"))
    with pytest.raises(InputError, match="does not overlap"):
        load_case_volume(find_cases(_csv(tmp_path, IMAGE, tmp_path / "elsewhere.nii.gz"))[0], axis=2, preset="auto")


def _csv(folder: Path, image: Path, label: Path) -> Path:
    path = folder / f"{label.name}.csv"
    path.write_text(f"image,label\n{image},{label}\n")
    return path


def test_train_chooses_labels_by_value_or_name():
    names = {"ct": {5: "liver", 2: "kidney_right"}}
    assert resolve_labels(["Liver", "2", "kidney right"], names) == [5, 2, 2]
    with pytest.raises(InputError, match="kidney_right, liver"):
        resolve_labels(["spleen"], names)


# ---------------------------------------------------------------- prompts


def test_train_boxes_use_the_reference_jitter_scaled_to_the_model():
    assert scaled_jitter(20, 1024) == 20 and scaled_jitter(20, 512) == 10 and scaled_jitter(20, 256) == 5
    mask = np.zeros((64, 64), bool)
    mask[20:30, 10:40] = True
    rng = np.random.default_rng(0)
    boxes = np.array([jittered_box(mask, 5, rng) for _ in range(200)])
    tight = np.array([10, 20, 39, 29])
    growth = np.abs(boxes - tight)
    assert growth.min() == 0 and growth.max() == 5  # 0..jitter on each side, never more
    assert (boxes[:, :2] <= tight[:2]).all() and (boxes[:, 2:] >= tight[2:]).all()  # only ever grows


def test_train_click_prompts_put_positives_inside_and_negatives_near_outside():
    mask = np.zeros((64, 64), bool)
    mask[20:30, 10:40] = True
    prompts = PromptSet.from_truth(np.stack([mask, mask]), use_box=False, jitter=0, rng=np.random.default_rng(2),
                                   with_negative=True)
    assert prompts.labels.tolist() == [[1, 0], [1, 0]] and prompts.num_points == 2
    for (px, py), (nx, ny) in prompts.points:
        assert mask[int(py), int(px)] and not mask[int(ny), int(nx)]
        assert 17 <= ny <= 32 and 2 <= nx <= 47  # near the object: its box grown by a quarter
    prompts = PromptSet.from_truth(mask[None], use_box=True, jitter=0, rng=np.random.default_rng(2))
    points, labels = prompts.as_points("cpu")
    assert points.tolist() == [[[10.0, 20.0], [39.0, 29.0]]] and labels.tolist() == [[2, 3]]


def test_train_corrective_clicks_land_on_the_larger_error():
    truth = np.zeros((32, 32), bool)
    truth[8:24, 8:24] = True
    rng = np.random.default_rng(1)
    shrunk = np.zeros_like(truth)
    shrunk[12:20, 12:20] = True
    (x, y), label = corrective_click(shrunk, truth, rng)
    assert label == 1 and truth[int(y), int(x)] and not shrunk[int(y), int(x)]
    spilled = np.zeros_like(truth)
    spilled[4:28, 4:28] = True
    (x, y), label = corrective_click(spilled, truth, rng)
    assert label == 0 and spilled[int(y), int(x)] and not truth[int(y), int(x)]
    assert corrective_click(truth, truth, rng) is None


# ---------------------------------------------------------------- model set-up


def test_train_default_parts_are_adapters_decoder_and_memory(micro_files):
    model, config, _ = initial_model(f"random:{micro_files / 'micro.json'}", None, None, seed=0)
    names = set(set_trainable(model, list(DEFAULT_PARTS)))
    assert any(".adapter." in n for n in names)
    assert not any(n.startswith("image_encoder.") and ".adapter." not in n for n in names)
    assert any(n.startswith("sam_mask_decoder.") for n in names)
    assert any(n.startswith("memory_attention.") for n in names) and "no_mem_embed" in names
    assert not any(n.startswith("sam_prompt_encoder.") for n in names)
    everything = set_trainable(model, ["all"])
    assert len(everything) == len(list(model.parameters()))


def test_train_init_takes_a_checkpoint_file_a_config_name_or_random(micro_files, tmp_path):
    model, config, _ = initial_model(f"random:{micro_files / 'micro.json'}", None, None, seed=0)
    weights = tmp_path / "mine.pt"
    torch.save({"model": model.state_dict()}, weights)
    with pytest.raises(InputError, match="--config"):
        initial_model(str(weights), None, None, seed=0)
    (tmp_path / "mine.config.json").write_text(json.dumps(config))
    loaded, _, source = initial_model(str(weights), None, None, seed=1)
    assert "checkpoint" in source
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    random_again, _, _ = initial_model(str(micro_files / "micro.json"), None, None, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(random_again.state_dict().values(), model.state_dict().values()))
    _, named, source = initial_model("sam2-hiera-tiny", None, None, seed=0)  # a config name only: random init
    assert "random" in source and named["model"]["image_encoder"]["trunk"]["embed_dim"] == 96
    with pytest.raises(WeightsError, match="samed2 weights download sam2.1-hiera-tiny"):
        initial_model("sam2.1-hiera-tiny", None, str(tmp_path / "empty-cache"), seed=0)
    with pytest.raises(InputError, match="not a file, a checkpoint name or a config name"):
        initial_model("no-such-model", None, None, seed=0)


# ---------------------------------------------------------------- checkpoints


def test_train_checkpoint_writes_are_atomic(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"step": 1, "model": {"w": torch.ones(3)}})
    with pytest.raises(Exception):
        save_checkpoint(path, {"step": 2, "model": {"w": torch.zeros(3)}, "broken": lambda: None})
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    with pytest.raises(InputError, match="not a samed2 training checkpoint"):
        torch.save({"model": {}}, tmp_path / "other.pt")
        load_checkpoint(tmp_path / "other.pt")


# ---------------------------------------------------------------- runs: resume, DDP, export


@pytest.fixture(scope="module")
def uninterrupted_run(micro_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "straight"
    result = run_module(micro_args(micro_files, out, 24, "--checkpoint-every", "2", "--augment"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_train_run_writes_metrics_plot_checkpoint_and_export(uninterrupted_run):
    rows = (uninterrupted_run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"loss", "train_dice", "slices_per_s", "val_dice", "val_dice_5"} <= set(header)
    assert len(rows) == 1 + 24
    validated = [r for r in rows[1:] if r.split(",")[header.index("val_dice")]]
    assert len(validated) == 6  # every 4 steps
    assert (uninterrupted_run / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_checkpoint(checkpoint_path(uninterrupted_run))["step"] == 24
    assert (uninterrupted_run / "straight.bank.safetensors").exists()


@pytest.mark.slow
def test_resume_after_sigkill_reaches_the_same_weights(micro_files, uninterrupted_run, tmp_path):
    out = tmp_path / "straight"  # same folder name, so the export has the same name
    args = micro_args(micro_files, out, 24, "--checkpoint-every", "2", "--augment")
    process = subprocess.Popen([sys.executable, "-m", "samed2_tools.cli", "train", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not checkpoint_path(out).exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = load_checkpoint(checkpoint_path(out))["step"]
    assert killed_at < 24, "the run finished before it could be killed"
    assert not (out / "straight.pt").exists()

    result = run_module(["--resume", "--out", str(out), "--num-threads", "1", "--deterministic", "--no-progress"])
    assert result.returncode == 0, result.stderr[-3000:]
    resumed, straight = exported_state(out), exported_state(uninterrupted_run)
    assert resumed.keys() == straight.keys()
    different = [k for k in straight if not torch.equal(resumed[k], straight[k])]
    assert not different, f"resumed from step {killed_at}: {len(different)} tensors differ, e.g. {different[:3]}"
    assert ConfidenceBank.load(out / "straight.bank.safetensors").ious.tolist() == \
        ConfidenceBank.load(uninterrupted_run / "straight.bank.safetensors").ious.tolist()
    loss_column = [r.split(",")[3] for r in (out / "metrics.csv").read_text().splitlines()]
    assert loss_column == [r.split(",")[3] for r in (uninterrupted_run / "metrics.csv").read_text().splitlines()]


def first_moments(run_dir: Path) -> list:
    """AdamW's running mean of the gradients per parameter, from the run's checkpoint."""
    state = load_checkpoint(checkpoint_path(run_dir))["optimizer"]["state"]
    return [state[i]["exp_avg"] for i in sorted(state)]


@pytest.mark.slow
def test_ddp_two_processes_train_like_one_process_accumulating_two(micro_files, tmp_path):
    """Two DDP processes average their gradients (AdamW's first moment, linear in the gradient, equals
    that of one process accumulating two micro-batches; a sum would double it). Clipping is off, as
    clipping to a norm would hide a sum."""
    common = micro_args(micro_files, tmp_path / "x", 3, "--checkpoint-every", "3", "--grad-clip", "0")
    single = run_module([*_with_out(common, tmp_path / "single"), "--accumulate", "2"])
    assert single.returncode == 0, single.stderr[-3000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "samed2_tools.cli", "train", *_with_out(common, tmp_path / "ddp")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = exported_state(tmp_path / "single"), exported_state(tmp_path / "ddp")
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert worst < 1e-4, f"DDP weights differ from single-process accumulation by {worst}"
    moments = zip(first_moments(tmp_path / "single"), first_moments(tmp_path / "ddp"))
    ratios = [float(d.norm() / s.norm()) for s, d in moments if s.norm() > 0]
    assert ratios and max(abs(r - 1) for r in ratios) < 1e-3, f"DDP / single gradient scale: {ratios[:5]}"
    initial = build_model(MICRO_CONFIG).state_dict()
    assert any(not torch.equal(initial[k], two[k]) for k in two)  # it trained
    rows = (tmp_path / "ddp" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 3  # written by rank 0 only
    assert [r.split(",")[3] for r in rows] == [r.split(",")[3] for r in
                                               (tmp_path / "single" / "metrics.csv").read_text().splitlines()]


def _with_out(args: list, out: Path) -> list:
    args = list(args)
    args[args.index("--out") + 1] = str(out)
    return args


def test_train_export_is_accepted_by_samed2_weights_import(uninterrupted_run, tmp_path):
    weights = uninterrupted_run / "straight.pt"
    config = json.loads((uninterrupted_run / "straight.config.json").read_text())
    cached = import_checkpoint(weights, name="micro-run", config=config, cache_dir=tmp_path / "cache")
    model = load_weights(build_model(config), cached)
    assert len(ConfidenceBank.load(uninterrupted_run / "straight.bank.safetensors")) > 0
    assert model.image_size == 64


def test_train_refuses_to_overwrite_a_run_without_resume(micro_files, uninterrupted_run, capsys):
    assert cli_main(["train", *micro_args(micro_files, uninterrupted_run, 2)]) == 2
    assert "--resume" in capsys.readouterr().err


# ---------------------------------------------------------------- the test-trained model


SEED_BOUNDS = {LIVER: 0.92, RIGHT_KIDNEY: 0.5, LEFT_KIDNEY: 0.5}
"""Held-out box Dice that every training seed tried reached, less a margin (docs/TRAINING.md: seeds 0-4 gave
liver 0.949-0.963, kidneys 0.62-0.95: the kidneys depend on the seed, the liver does not)."""

MIN_OBJECT_VOXELS = 20
"""Held-out objects smaller than this are not scored: at the fixture's 128 px input the mask decoder's
32 x 32 output has one cell per 4 x 3 slice pixels, so a kidney's 6-voxel last slice is below what
the model can draw."""


def held_out_box_dice(model, volume, labels, slices, value) -> list:
    """Dice per held-out slice of a tight box prompt on it, encoded with its fixed pair partner."""
    from samed2.presets import default_preset

    window = default_preset(volume.array, volume.modality).resolve(volume.array)
    scores = []
    for k in slices:
        truth = labels[k] == value
        if truth.sum() < MIN_OBJECT_VOXELS:
            continue
        first = k - k % 2
        pair = [window.apply(volume.get_slice(2, i)) for i in (first, min(first + 1, volume.num_slices(2) - 1))]
        with torch.no_grad():
            image = model.encode_images(preprocess_slices(pair, model.image_size))
            image = image.select(slice(k - first, k - first + 1))
            corners = slice_box_to_model(mask_box(truth), truth.shape, model.image_size).reshape(1, 2, 2)
            pred, _ = model.track_step(k, image, {}, {}, volume.num_slices(2), corners,
                                       torch.tensor([[2, 3]], dtype=torch.int32), is_init_cond_frame=True)
        mask = (logits_to_slice(pred.low_res_masks, truth.shape)[0, 0] > 0).numpy()
        scores.append(dice(mask, truth))
    return scores


def box_fill_dice(labels, slices, value) -> list:
    """Dice per held-out slice of filling the object's tight box: what a model must beat."""
    scores = []
    for k in slices:
        truth = labels[k] == value
        if truth.sum() >= MIN_OBJECT_VOXELS:
            rows, columns = np.nonzero(truth)
            filled = np.zeros_like(truth)
            filled[rows.min(): rows.max() + 1, columns.min(): columns.max() + 1] = True
            scores.append(dice(filled, truth))
    return scores


def held_out_means(trained) -> tuple:
    """Mean held-out box Dice per object for the model and for filling the box."""
    model = build_trained_model(trained)
    volume = load_volume(IMAGE)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(LABELS)))
    figures = {value: held_out_box_dice(model, volume, labels, trained.held_out, value) for value in TRAINED_LABELS}
    assert all(len(scores) >= 4 for scores in figures.values())
    fill = {value: float(np.mean(box_fill_dice(labels, trained.held_out, value))) for value in TRAINED_LABELS}
    means = {value: float(np.mean(scores)) for value, scores in figures.items()}
    print(f"\nheld-out slices {trained.held_out}, box Dice (filling the box):",
          ", ".join(f"{name} {means[v]:.3f} ({fill[v]:.3f})" for name, v in
                    (("liver", LIVER), ("right kidney", RIGHT_KIDNEY), ("left kidney", LEFT_KIDNEY))))
    return means, fill


def test_trained_model_segments_held_out_slices_from_a_box(trained_model):
    """The committed model on slices it never saw (they lie between trained neighbours of the same
    scan: this shows learning, not generalisation to other scans). Measured: liver 0.96, kidneys
    0.92-0.93; filling the box scores 0.53 / 0.80 / 0.77. Bounds: 0.05 below what was measured, far
    above CPU float noise, and each at least 0.08 above filling the box."""
    means, fill = held_out_means(trained_model)
    assert means[LIVER] >= 0.90 and means[RIGHT_KIDNEY] >= 0.87 and means[LEFT_KIDNEY] >= 0.87
    assert all(means[v] >= fill[v] + 0.08 for v in TRAINED_LABELS)


@pytest.mark.slow
def test_the_recipe_trains_a_model_that_beats_filling_the_box():
    """The recipe (trained_model.py) trained afresh on this machine reaches the bounds that every
    training seed tried reached (docs/TRAINING.md, "The test-trained model": seeds 0-4); a different CPU
    trains a different model, like a different seed, so nothing finer is asserted."""
    means, fill = held_out_means(load_trained(fresh_run(seed=0)))
    assert means[LIVER] >= SEED_BOUNDS[LIVER]
    assert means[RIGHT_KIDNEY] >= SEED_BOUNDS[RIGHT_KIDNEY] and means[LEFT_KIDNEY] >= SEED_BOUNDS[LEFT_KIDNEY]
    assert means[LIVER] >= fill[LIVER] + 0.2


def test_trained_model_propagates_the_liver_through_memory_from_one_box(trained_model):
    """A box on the middle slice, propagated both ways through memory (SAM 2 tracking) over all 30 slices."""
    model = build_trained_model(trained_model)
    volume = load_volume(IMAGE)
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(LABELS))) == LIVER
    with Session(volume, model, axis=2, device="cpu", strategy="track") as session:
        session.add_prompt(1, 15, box=mask_box(liver[15]))
        tracked = sorted(r.index for r in session.propagate(options=PropagationOptions(stop_after_absent=0)))
        mask = session.mask_volume(1)
    per_slice = [dice(mask[k], liver[k]) for k in range(volume.num_slices(2))]
    print(f"\nliver propagated from one box: Dice {dice(mask, liver):.3f}, per slice {np.round(per_slice, 2).tolist()}")
    assert tracked == [k for k in range(30) if k != 15]
    assert dice(mask, liver) >= 0.90  # measured 0.974; copying the box to every slice scores 0.51
    assert min(per_slice) >= 0.85  # measured 0.94


def test_box_chain_follows_the_left_kidney_to_its_end(trained_model):
    """A box on the middle slice of the left kidney, propagated up (towards its end; its other end is
    the volume's edge) with the default strategy for a model with a bank (box-chain, the model's own
    bank): each slice's box comes from the previous mask, and the kidney is followed to its last slice
    (measured: Dice 0.92-0.99; seeds 2-4 of the recipe: 0.85-0.99 on slices of at least 20 voxels,
    the 6-voxel last slice is below the model's resolution). This model's object score does not
    say where the kidney ends (seeds 0-4: docs/TRAINING.md), so propagation runs on; stopping is tested on a
    model that says "absent" (test_session.py) and on real weights (MedSAM-Lite)."""
    model = build_trained_model(trained_model)
    volume = load_volume(IMAGE)
    kidney = sitk.GetArrayFromImage(sitk.ReadImage(str(LABELS))) == LEFT_KIDNEY
    present = np.nonzero(kidney.any(axis=(1, 2)))[0]
    middle, last = int(np.median(present)), int(present.max())
    with Session(volume, model, axis=2, device="cpu", bank=ConfidenceBank.load(trained_model.bank)) as session:
        assert session.strategy == "box-chain"
        session.add_prompt(1, middle, box=mask_box(kidney[middle]))
        up = PropagationOptions("up", stop=last, stop_after_absent=0)
        results = {r.index: r.mask for r in session.propagate(options=up)}
    per_slice = [dice(results[k], kidney[k]) for k in range(middle + 1, last + 1)]
    print(f"\nleft kidney from slice {middle} to its end ({last}): Dice per slice {np.round(per_slice, 2)}")
    assert sorted(results) == list(range(middle + 1, last + 1))
    drawable = [d for k, d in zip(range(middle + 1, last + 1), per_slice) if kidney[k].sum() >= MIN_OBJECT_VOXELS]
    assert len(drawable) >= 8 and min(drawable) >= 0.8
    assert results[last].any(), "the chain reaches the kidney's last slice"
