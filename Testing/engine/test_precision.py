"""Precision: `auto` picks bf16 autocast only where the device has native bf16 and it measures faster;
bf16 masks agree with fp32 ones (the golden and Meta parity tests stay in fp32)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from samed2 import device as device_module
from samed2.choices import PropagationOptions
from samed2.errors import InputError
from samed2.model_coords import mask_box
from samed2.session import Session
from samed2.volume_files import load_volume

from trained_model import build_trained_model

SAMED2 = [str(Path(sys.executable).with_name("samed2"))]
CPU = torch.device("cpu")
LIVER = 5


@pytest.mark.parametrize("native, speedup, expected", [(False, 5.0, "fp32"), (True, 1.1, "fp32"),
                                                        (True, 2.0, "bf16")])
def test_precision_auto_is_bf16_only_where_native_and_measured_faster(monkeypatch, native, speedup, expected):
    monkeypatch.setattr(device_module, "native_bf16", lambda device: native)
    monkeypatch.setattr(device_module, "precision_probe", lambda device: (speedup, 1.0))
    assert device_module.pick_precision("auto", CPU) == expected
    assert device_module.pick_precision("fp32", CPU) == "fp32" and device_module.pick_precision("bf16", CPU) == "bf16"


def test_precision_refuses_an_unknown_name():
    with pytest.raises(InputError, match="unknown precision 'fp16'"):
        device_module.pick_precision("fp16", CPU)
    run = subprocess.run([*SAMED2, "bench", "--precision", "fp16"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "invalid choice: 'fp16'" in run.stderr


def test_precision_bf16_measurement_times_a_real_product():
    assert all(seconds > 0 for seconds in device_module.precision_probe(CPU))
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert device_module.native_bf16(CPU) == native


def test_precision_bf16_keeps_no_copy_of_the_weights():
    """Autocast's weight cache keeps a bfloat16 copy of each weight until the outermost autocast exits
    (0.5 GB of a SAMed-2 session's peak RSS, measured): the sessions' autocast casts a weight where it is
    used, so a weight changed between two calls in one autocast region is seen by the second call."""
    layer = torch.nn.Linear(64, 64)
    x = torch.randn(4, 64)
    with torch.no_grad(), device_module.autocast(CPU, "bf16"):
        before = layer(x)
        layer.weight.zero_()
        after = layer(x)
    assert before.dtype == after.dtype == torch.bfloat16
    assert (before.float() - layer.bias).abs().max() > 0.1, "x changes the output while the weights are not 0"
    torch.testing.assert_close(after.float(), layer.bias.expand_as(after), atol=1e-2, rtol=0)


def liver_box(data_dir, index):
    labels = load_volume(data_dir / "totalseg" / "example_seg.nii.gz").array
    return mask_box(labels[index] == LIVER)


def test_precision_bf16_session_masks_match_fp32(ct_volume, data_dir, trained_model):
    """The committed test-trained model, a box on the liver, propagated through the whole volume in
    fp32 and in bf16 autocast: every liver mask within IoU 0.99 of fp32 (measured on the Zen 5 host:
    min 0.9956, mean 0.9989 over 30 slices; the margin to 0.99 covers another CPU's accumulation
    order). The kidneys, tracked weakly and only a few pixels on some slices, are no fair IoU test.
    A CPU without native bf16 emulates it (100x slower on the AVX2 host): there the check covers the
    seven slices around the box."""
    model = build_trained_model(trained_model)
    seed = 15
    start, stop = (None, None) if device_module.native_bf16(CPU) else (seed - 3, seed + 3)
    box = liver_box(data_dir, seed)
    dtypes = []
    linear = next(m for m in model.image_encoder.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    masks = {}
    for precision in ("fp32", "bf16"):
        with Session(ct_volume, model, axis=2, device="cpu", preset="soft_tissue", precision=precision) as session:
            assert session.features.precision == precision
            session.add_prompt(1, seed, box=box)
            list(session.propagate([1], PropagationOptions(start=start, stop=stop, stop_after_absent=0)))
            masks[precision] = session.objects[1].masks
    assert torch.bfloat16 in dtypes and torch.float32 in dtypes, "the encoder's products ran in both precisions"
    assert masks["fp32"].keys() == masks["bf16"].keys()
    assert len(masks["fp32"]) == (ct_volume.num_slices(2) if start is None else stop - start + 1)
    for index, exact in masks["fp32"].items():
        assert exact.any(), "the liver is on every slice of this CT"
        fast = masks["bf16"][index]
        iou = np.logical_and(exact, fast).sum() / np.logical_or(exact, fast).sum()
        assert iou >= 0.99, (index, iou)
