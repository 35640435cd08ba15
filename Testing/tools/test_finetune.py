"""Fine-tuning MedSAM-Lite on a few corrected slices: `samed2 train --init medsam-lite --slices ... --register NAME`.

One short run on the real MedSAM-Lite weights and the real brain MR (its tumour lies on slices
11-17): it trains on 4 slices, validates on the other 3, caches each slice's image embedding once,
leaves the image encoder untouched, and registers a model that loads by name, with its provenance.
The gain itself is measured by `python -m samed2_tools.finetune_gain` (docs/TRAINING.md), not here.
"""
import time
from pathlib import Path

import pytest
import torch

from samed2.errors import InputError
from samed2.labelmap import labels_on_grid, read_labelmap
from samed2.volume_files import load_volume
from samed2.weights import import_checkpoint, load_model
from samed2.weights.cache import read_manifest
from samed2_tools.cli import main as cli_main
from samed2_tools.train import TrainOptions, train
from samed2_tools.train.options import LITE_DEFAULT_PARTS
from SAMed2SlicerLib.finetune import LOG_EVERY, finetune_job, name_state
from SAMed2SlicerLib.jobs import JobCancelled

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
MR_IMAGE, MR_LABEL = DATA / "pyradiomics" / "brain1_image.nrrd", DATA / "pyradiomics" / "brain1_label.nrrd"
CORRECTED = [12, 13, 15, 16]
OTHERS = [11, 14, 17]


@pytest.fixture(scope="module")
def setting(tmp_path_factory, lite_file):
    folder = tmp_path_factory.mktemp("finetune")
    cache = folder / "cache"
    import_checkpoint(lite_file, cache_dir=cache)
    (folder / "cases.csv").write_text(f"image,label\n{MR_IMAGE},{MR_LABEL}\n")
    return folder, cache


def lite_options(folder: Path, cache: Path, out: str, **changes) -> TrainOptions:
    values = dict(data=str(folder / "cases.csv"), init="medsam-lite", cache_dir=str(cache), out=str(folder / out),
                  slices=list(CORRECTED), steps=4, batch_size=2, warmup_steps=1, lr=1e-3, log_every=1, val_every=4,
                  val_fraction=0.0, num_threads=1, progress=False, seed=0)
    values.update(changes)
    return TrainOptions(**values)


@pytest.fixture(scope="module")
def finetuned(setting):
    folder, cache = setting
    encoded = []
    from samed2_tools.train import lite

    original = lite.EmbeddingCache.__call__

    def counting(self, case, k):
        if (case.name, k) not in self._stored:
            encoded.append(k)
        return original(self, case, k)

    lite.EmbeddingCache.__call__ = counting
    try:
        result = train(lite_options(folder, cache, "run", register="brain-tumour"))
    finally:
        lite.EmbeddingCache.__call__ = original
    return result, encoded, cache


@pytest.mark.slow
def test_finetune_lite_trains_decoder_on_the_listed_slices_only_and_validates_on_the_others(finetuned, lite_model):
    result, encoded, _ = finetuned
    assert result.steps == 4
    assert sorted(encoded) == sorted(CORRECTED + OTHERS)  # each slice encoded once: 4 to train on, 3 to validate
    rows = (result.run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and 0.0 < result.last_metrics["val_dice"] <= 1.0
    trained = torch.load(result.weights, weights_only=True)["model"]
    base = lite_model.state_dict()
    changed = {name.split(".")[0] for name in base if not torch.equal(base[name], trained[name])}
    assert "mask_decoder" in changed and changed <= set(LITE_DEFAULT_PARTS)  # the image encoder is untouched


def test_finetune_registers_a_model_that_loads_by_name_with_its_provenance(finetuned):
    result, _, cache = finetuned
    record = read_manifest(cache)["brain-tumour"]
    assert record.provenance["base_model"] == "medsam-lite" and record.provenance["slices"] == CORRECTED
    assert record.provenance["steps"] == 4 and record.provenance["cases"] == ["brain1_image"]
    assert record.provenance["train"] == list(LITE_DEFAULT_PARTS)
    model = load_model("brain-tumour", cache)
    exported = torch.load(result.weights, weights_only=True)["model"]
    assert all(torch.equal(value, exported[name]) for name, value in model.state_dict().items())


def test_finetune_refuses_a_taken_or_published_name_before_training(setting, finetuned):
    folder, cache = setting
    with pytest.raises(InputError, match="already in the weights cache"):
        train(lite_options(folder, cache, "again", register="brain-tumour"))
    with pytest.raises(InputError, match="published checkpoint"):
        train(lite_options(folder, cache, "again", register="medsam-lite"))
    assert not (folder / "again").exists()  # refused before anything was written


@pytest.mark.parametrize("slices, message", [
    ([12], "at least 2 corrected slices"),
    ([12, 3], r"slice\(s\) \[3\] of case brain1_image hold none of the labels"),
    ([12, 40], r"--slices \[40\] lie outside case brain1_image: it has 25 slices"),
])
def test_finetune_bad_slices_get_a_clear_error(setting, slices, message):
    folder, cache = setting
    with pytest.raises(InputError, match=message):
        train(lite_options(folder, cache, "bad", slices=slices))


def test_finetune_slices_option_reads_lists_and_ranges(setting, capsys):
    folder, cache = setting
    code = cli_main(["train", "--data", str(folder / "cases.csv"), "--init", "medsam-lite", "--cache-dir", str(cache),
                     "--out", str(folder / "cli"), "--slices", "3,9-10", "--steps", "1", "--no-progress"])
    assert code != 0
    assert "slice(s) [3, 9, 10] of case brain1_image hold none" in capsys.readouterr().err



# ---------------------------------------------------------------- the GUIs' action (SAMed2SlicerLib.finetune)


@pytest.fixture(scope="module")
def mr_volume_and_tumour():
    """The MR and the tumour on the corrected slices only (no slice left to validate: fewer slices to encode)."""
    volume = load_volume(MR_IMAGE)
    tumour = labels_on_grid(read_labelmap(MR_LABEL), volume.grid_image(), "the MR") == 1
    tumour[OTHERS] = False
    return volume, tumour


@pytest.mark.slow
def test_finetune_job_trains_in_its_own_process_and_registers_the_model(setting, mr_volume_and_tumour):
    _, cache = setting
    volume, tumour = mr_volume_and_tumour
    job = finetune_job(volume, tumour, CORRECTED, 2, "medsam-lite", "from-the-page", cache, steps=2,
                       case="brain MR 1").start()
    progress = job.wait(timeout_s=600)
    assert job.error is None and job.result == "from-the-page" and progress.done == 2
    provenance = read_manifest(cache)["from-the-page"].provenance
    assert provenance["slices"] == CORRECTED and provenance["cases"] == ["brain_MR_1"]
    assert load_model("from-the-page", cache).image_size == 256


@pytest.mark.slow
def test_finetune_job_cancelled_mid_training_registers_nothing(setting, mr_volume_and_tumour):
    _, cache = setting
    volume, tumour = mr_volume_and_tumour
    job = finetune_job(volume, tumour, CORRECTED, 2, "medsam-lite", "cancelled", cache, steps=10000).start()
    deadline = time.monotonic() + 600
    while job.poll(0.2).done < LOG_EVERY and not job.finished and time.monotonic() < deadline:
        pass
    assert job.progress().done >= LOG_EVERY and not job.finished  # training was under way
    job.cancel()
    job.wait(timeout_s=60)
    assert isinstance(job.error, JobCancelled)
    assert "cancelled" not in read_manifest(cache) and not (cache / "cancelled.pt").exists()


def test_finetune_job_refuses_a_taken_name_and_too_few_slices(setting, finetuned, mr_volume_and_tumour):
    _, cache = setting
    volume, tumour = mr_volume_and_tumour
    assert name_state("brain-tumour", cache) == "taken" and name_state("medsam-lite", cache) == "published"
    with pytest.raises(ValueError, match="already in the weights cache"):
        finetune_job(volume, tumour, CORRECTED, 2, "medsam-lite", "brain-tumour", cache)
    finetune_job(volume, tumour, CORRECTED, 2, "medsam-lite", "brain-tumour", cache, replace=True)  # asked: allowed
    with pytest.raises(ValueError, match="at least 2 slices"):
        finetune_job(volume, tumour, [13], 2, "medsam-lite", "one-slice", cache)
