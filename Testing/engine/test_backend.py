"""The image encoders' backend (samed2.backends): OpenVINO's outputs and masks against torch's on the real
encoders, the converted-model cache (its key, reuse, a damaged entry rebuilt), the choice by measurement,
and everything without OpenVINO. Correctness only: the speed is `samed2 bench`'s (row lite_encoder)."""
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from samed2 import backends
from samed2.backends import ChosenEncoder, ConvertedEncoder, image_encoder, weights_hash
from samed2.errors import InputError
from samed2.model_coords import mask_box
from samed2.session import Session
from samed2.volume_files import load_volume

from suite import require_module
from trained_model import build_trained_model

SAMED2 = [str(Path(sys.executable).with_name("samed2"))]
CPU = torch.device("cpu")
LIVER, SPLEEN = 5, 1


@pytest.fixture
def openvino():
    return require_module("openvino", "the OpenVINO backend, samed2[cpu]")


def small_encoder(seed=0) -> nn.Module:
    """A small convolutional encoder with a (list, tensor) output: quick to convert, for the cache's bookkeeping."""
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.down = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, stride=2, padding=1)

        def forward(self, x):
            stem = torch.nn.functional.gelu(self.stem(x))
            return [stem, self.down(stem)], stem.mean(1)
    torch.manual_seed(seed)
    return Encoder().eval()


def relative_error(got, expected) -> float:
    return float((got.float() - expected.float()).norm() / expected.float().norm())


def entries(cache: Path) -> list:
    return sorted(p for p in cache.iterdir()) if cache.exists() else []


# ---- the real encoders ------------------------------------------------------------------------

@pytest.mark.slow
def test_backend_openvino_masks_match_torch_for_medsam_lite(openvino, lite_model, data_dir, tmp_path):
    """MedSAM-Lite's TinyViT run by OpenVINO (fp32): embeddings within 1e-4 of torch's, box masks IoU >= 0.99."""
    volume = load_volume(data_dir / "totalseg" / "example_ct_sm.nii.gz")
    labels = load_volume(data_dir / "totalseg" / "example_seg.nii.gz").array
    k = 15
    prompts = {obj: ((), mask_box(labels[k] == obj)) for obj in (LIVER, SPLEEN)}
    masks, features = {}, {}
    for backend in ("torch", "openvino"):
        with Session(volume, lite_model, axis=2, backend=backend, converted_cache=tmp_path) as session:
            masks[backend] = session.add_prompts(k, prompts)
            features[backend] = session.features.cache.get(k, CPU).features
    assert isinstance(session.features.image_encoder, ChosenEncoder)
    assert isinstance(session.features.image_encoder.chosen[(1, 3, 256, 256)], ConvertedEncoder)
    assert relative_error(features["openvino"], features["torch"]) < 1e-4
    for obj in (LIVER, SPLEEN):
        a, b = masks["openvino"][obj], masks["torch"][obj]
        assert a.any() and (a & b).sum() / (a | b).sum() >= 0.99
    (folder,) = entries(tmp_path)
    key = json.loads((folder / "entry.json").read_text())["key"]
    assert key == {"weights_sha256": weights_hash(lite_model.image_encoder), "module": "TinyViT",
                   "input": [1, 3, 256, 256], "precision": "fp32", "openvino": openvino.__version__,
                   "samed2": key["samed2"]}


@pytest.mark.slow
def test_backend_openvino_matches_torch_for_the_samed2_encoder(openvino, trained_model, tmp_path):
    """SAMed-2's Hiera encoder with its temporal adapter (a slice pair): every output of encode_images."""
    model = build_trained_model(trained_model)
    gen = torch.Generator().manual_seed(0)
    pair = torch.rand(2, 3, model.image_size, model.image_size, generator=gen)
    encoder = image_encoder(model.image_encoder, "openvino", CPU, "fp32", tmp_path)
    with torch.no_grad():
        got, expected = model.encode_images(pair, encoder), model.encode_images(pair)
    for a, b in zip(got.high_res + [got.features, got.pos], expected.high_res + [expected.features, expected.pos]):
        assert a.shape == b.shape and relative_error(a, b) < 1e-4


# ---- the cache ----------------------------------------------------------------------------------

def test_backend_cache_is_keyed_by_weights_input_and_precision_and_reused(openvino, tmp_path, monkeypatch):
    module, images = small_encoder(), torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        expected = module(images)
        got = image_encoder(module, "openvino", CPU, "fp32", tmp_path)(images)
    assert len(got) == 2 and len(got[0]) == 2, "the output keeps the module's nesting"
    assert all(relative_error(a, b) < 1e-5 for a, b in zip(backends.flat(got), backends.flat(expected)))
    (folder,) = entries(tmp_path)

    def no_conversion(*args):
        raise AssertionError("converted again although cached")
    with monkeypatch.context() as patched:
        patched.setattr(backends, "convert", no_conversion)
        image_encoder(module, "openvino", CPU, "fp32", tmp_path)(images)
    for encoder, shape in ((small_encoder(seed=1), (1, 3, 16, 16)), (module, (2, 3, 16, 16)), (module, (1, 3, 32, 32))):
        image_encoder(encoder, "openvino", CPU, "fp32", tmp_path)(torch.rand(shape))
    image_encoder(module, "openvino", CPU, "bf16", tmp_path)(images)
    assert len(entries(tmp_path)) == 5 and folder in entries(tmp_path), "other weights, shapes, precision: new entries"
    assert not list(tmp_path.glob(".*")), "no partial conversions left"


def test_backend_converts_in_full_precision_under_the_sessions_autocast(openvino, tmp_path):
    """A bf16 session encodes under autocast: the conversion traces the fp32 graph, OpenVINO computes in bf16."""
    from samed2.device import autocast

    module, images = small_encoder(), torch.rand(1, 3, 16, 16)
    with torch.no_grad(), autocast(CPU, "bf16"):
        got = image_encoder(module, "openvino", CPU, "bf16", tmp_path)(images)
    with torch.no_grad():
        expected = module(images)
    (folder,) = entries(tmp_path)
    assert 'element_type="bf16"' not in (folder / "encoder.xml").read_text()
    assert all(relative_error(a, b) < 5e-2 for a, b in zip(backends.flat(got), backends.flat(expected)))


@pytest.mark.parametrize("damage", ["truncated weights", "broken graph", "no entry"])
def test_backend_damaged_cache_entry_is_rebuilt(openvino, tmp_path, caplog, damage):
    module, images = small_encoder(), torch.rand(1, 3, 16, 16)
    image_encoder(module, "openvino", CPU, "fp32", tmp_path)(images)
    (folder,) = entries(tmp_path)
    if damage == "truncated weights":
        data = (folder / "encoder.bin").read_bytes()
        (folder / "encoder.bin").write_bytes(data[: len(data) // 2])
    elif damage == "broken graph":
        (folder / "encoder.xml").write_text("<net>")
    else:
        (folder / "entry.json").unlink()
    with caplog.at_level(logging.WARNING, logger="samed2.backends"), torch.no_grad():
        got = image_encoder(module, "openvino", CPU, "fp32", tmp_path)(images)
        expected = module(images)
    assert "is damaged" in caplog.text and "converting again" in caplog.text
    assert all(relative_error(a, b) < 1e-5 for a, b in zip(backends.flat(got), backends.flat(expected)))
    assert entries(tmp_path) == [folder] and ConvertedEncoder(folder, "fp32").entry["key"]["input"] == [1, 3, 16, 16]


# ---- the choice ---------------------------------------------------------------------------------

@pytest.mark.parametrize("timing, chosen", [
    ({"torch_s": 1.0, "openvino_s": 0.5, "relative_error": 1e-6}, "openvino"),
    ({"torch_s": 1.0, "openvino_s": 0.95, "relative_error": 1e-6}, "torch"),  # not 1.1x faster
    ({"torch_s": 1.0, "openvino_s": 0.5, "relative_error": 0.1}, "torch"),  # faster, but does not agree
])
def test_backend_auto_keeps_openvino_only_where_faster_and_agreeing(openvino, tmp_path, monkeypatch, timing, chosen):
    module, images = small_encoder(), torch.rand(1, 3, 16, 16)
    monkeypatch.setattr(backends, "compare", lambda *args: timing)
    encoder = image_encoder(module, "auto", CPU, "fp32", tmp_path)
    encoder(images)
    assert (encoder.chosen[(1, 3, 16, 16)] is module) == (chosen == "torch")

    def no_timing(*args):
        raise AssertionError("timed again although the timing is kept with the converted model")
    monkeypatch.setattr(backends, "compare", no_timing)
    again = image_encoder(module, "auto", CPU, "fp32", tmp_path)
    again(images)
    assert (again.chosen[(1, 3, 16, 16)] is module) == (chosen == "torch")


def test_backend_auto_measurement_times_both_and_compares_outputs(openvino, tmp_path):
    module, images = small_encoder(), torch.rand(1, 3, 16, 16)
    encoder = image_encoder(module, "auto", CPU, "fp32", tmp_path)
    encoder(images)
    (folder,) = entries(tmp_path)
    timing = ConvertedEncoder(folder, "fp32").timing
    assert timing["torch_s"] > 0 and timing["openvino_s"] > 0 and timing["relative_error"] < 1e-5


def test_backend_auto_uses_torch_when_conversion_fails(openvino, tmp_path, monkeypatch, caplog):
    module, images = small_encoder(), torch.rand(1, 3, 16, 16)

    def unsupported(*args, **kwargs):
        raise RuntimeError("aten::something is not supported")
    monkeypatch.setattr(openvino, "convert_model", unsupported)
    with caplog.at_level(logging.WARNING, logger="samed2.backends"):
        encoder = image_encoder(module, "auto", CPU, "fp32", tmp_path)
        encoder(images)
    assert encoder.chosen[(1, 3, 16, 16)] is module and "could not convert" in caplog.text
    with pytest.raises(InputError, match="OpenVINO could not convert the image encoder .*not supported.*auto or torch"):
        image_encoder(module, "openvino", CPU, "fp32", tmp_path)(images)
    assert entries(tmp_path) == []


def test_backend_names_are_checked():
    module = small_encoder()
    with pytest.raises(InputError, match="unknown backend 'onnx'; choose one of auto, torch, openvino"):
        image_encoder(module, "onnx", CPU, "fp32")
    assert image_encoder(module, "torch", CPU, "fp32") is module
    assert image_encoder(module, "auto", torch.device("cuda"), "fp32") is module, "auto: torch off the CPU"
    with pytest.raises(InputError, match="runs on the CPU, not on cuda"):
        image_encoder(module, "openvino", torch.device("cuda"), "fp32")
    run = subprocess.run([*SAMED2, "segment", "in.nii.gz", "--backend", "onnx"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "invalid choice: 'onnx'" in run.stderr


def test_backend_everything_works_without_openvino(data_dir, tmp_path):
    """With openvino not importable (blocked in a fresh process): auto is torch and a session segments,
    and asking for openvino says how to install it."""
    script = f"""
import sys
sys.modules["openvino"] = None  # import openvino now raises ImportError
sys.path.insert(0, {str(Path(__file__).parents[1])!r})
from suite import golden_tiny_model
from samed2.errors import InputError
from samed2.session import Session
from samed2.volume_files import load_volume

model, volume = golden_tiny_model(), load_volume({str(data_dir / "totalseg" / "example_ct_sm.nii.gz")!r})
with Session(volume, model, axis=2, backend="auto", converted_cache={str(tmp_path)!r}) as session:
    assert session.features.image_encoder is model.image_encoder
    print("mask", session.add_prompt(1, 15, points=[(60, 50, True)]).shape)
try:
    Session(volume, model, axis=2, backend="openvino", converted_cache={str(tmp_path)!r})
except InputError as exc:
    print(exc)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "mask (101, 122)" in run.stdout
    assert "the OpenVINO backend needs the openvino package: pip install 'samed2[cpu]'" in run.stdout
    assert list(tmp_path.iterdir()) == []


def test_backend_rebuilt_nesting():
    tensors = [torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)]
    structure = backends.structure(([tensors[0], tensors[1]], tensors[2]))
    assert structure == [[None, None], None]
    rebuilt = backends.rebuilt(structure, iter(tensors))
    assert rebuilt[0][1] is tensors[1] and rebuilt[1] is tensors[2]
    assert np.array_equal(torch.cat(backends.flat(rebuilt)).numpy(), [0.0, 1.0, 2.0])
