"""Parity with the SAMed-2 reference: every output vector in ../shared/golden is reproduced."""
import copy

import pytest
import torch
from safetensors.torch import load_file

from samed2.bank import ConfidenceBank, image_key
from samed2.model import ImageFeatures

from parity_helpers import parity_error
from suite import GOLDEN, golden_tiny_model

# The golden README does not list the tracking box; this is the box whose corner-point prompt
# reproduces `track.0.*` (recovered by fitting the prompt to the vector, residual ~1e-10).
TRACK_BOX = [60.0, 70.0, 190.0, 180.0]
BANK_SIZE = 5


@pytest.fixture(scope="module")
def vectors(golden_dir):
    return load_file(str(golden_dir / "samed2_tiny_vectors.safetensors"))


@pytest.fixture(scope="module")
def golden_model(golden_dir):
    return golden_tiny_model()


def golden_bank(vectors) -> ConfidenceBank:
    entries = [[vectors[f"bank.{j}.{name}"] for name in ("maskmem_features", "maskmem_pos_enc", "iou", "image_embed")]
               for j in range(BANK_SIZE)]
    return ConfidenceBank.from_entries(entries, capacity=BANK_SIZE)


def run_reference_flow(model, vectors) -> dict:
    """Every output the golden file records, computed by this project's code."""
    out = {}
    images = vectors["enc.input"]
    image = model.encode_images(images)
    _, positions = model.image_encoder(images)
    for level, fpn in enumerate(image.high_res + [image.features]):
        out[f"enc.backbone_fpn.{level}"] = fpn
        out[f"enc.vision_pos_enc.{level}"] = positions[level]

    bank = golden_bank(vectors)
    chosen = bank.select(image.features)
    memory, memory_pos = bank.memory(chosen, device="cpu")
    out["pred.selected_indices"] = chosen
    out["pred.memory"] = memory.transpose(0, 1)  # the reference's (tokens, batch, C) layout
    pix = model.attend_memory(image, memory, memory_pos)
    out["pred.pix_feat_with_mem"] = pix

    box = model.decode(pix, image.high_res, boxes=vectors["pred.boxes"])
    out["pred.low_res_masks"], out["pred.ious"] = box.low_res_multimasks, box.ious
    out["pred.object_score_logits"] = box.object_score_logits
    points = model.decode(pix, image.high_res, vectors["pred.points"], vectors["pred.point_labels"], multimask=True)
    out["pred.points_low_res_masks"], out["pred.points_ious"] = points.low_res_multimasks, points.ious

    with_memory = ImageFeatures(image.high_res, pix, image.pos)
    features, pos = model.encode_memory(with_memory, model.upsample_logits(box.low_res_masks),
                                        box.object_score_logits, from_points=False)
    out["mem.maskmem_features"], out["mem.maskmem_pos_enc"] = features, pos

    bank.update(features, pos, vectors["update.ious"].reshape(-1), image.features)
    out["update.bank_ious_after"], out["update.bank_len_after"] = bank.ious, torch.tensor([len(bank)])
    out.update(run_tracking(model, vectors["track.frames"]))
    return out


def run_tracking(model, frames) -> dict:
    """Frame 0 prompted with a box as corner points, frames 1-3 tracked from memory."""
    out, cond, non_cond = {}, {}, {}
    for t, frame in enumerate(frames):
        image = model.encode_images(torch.stack([frame, frame])).select(slice(0, 1))  # duplicated pair
        if t == 0:
            corners = torch.tensor(TRACK_BOX).reshape(1, 2, 2)
            labels = torch.tensor([[2, 3]], dtype=torch.int32)
            pred, memory = model.track_step(t, image, cond, non_cond, len(frames), corners, labels,
                                            is_init_cond_frame=True)
            cond[t] = memory
        else:
            pred, memory = model.track_step(t, image, cond, non_cond, len(frames))
            non_cond[t] = memory
        out[f"track.{t}.pred_masks"] = pred.low_res_masks
        out[f"track.{t}.obj_ptr"] = pred.obj_ptr
        out[f"track.{t}.maskmem_features"] = memory.features
        out[f"track.{t}.object_score_logits"] = pred.object_score_logits
    return out


@pytest.fixture(scope="module")
def computed(golden_model, vectors):
    with torch.no_grad():
        return run_reference_flow(golden_model, vectors)


def output_keys(golden_dir_path):
    vectors = load_file(str(golden_dir_path / "samed2_tiny_vectors.safetensors"))
    inputs = {"enc.input", "pred.boxes", "pred.points", "pred.point_labels", "update.ious", "track.frames"}
    return sorted(k for k in vectors if k not in inputs and not k.startswith("bank."))


OUTPUT_KEYS = output_keys(GOLDEN) if GOLDEN.is_dir() else []


def test_golden_every_output_is_checked(vectors, computed):
    assert OUTPUT_KEYS, "no golden outputs found"
    assert set(OUTPUT_KEYS) == set(computed), "the flow must compute every golden output, and nothing else"


@pytest.mark.parametrize("key", OUTPUT_KEYS)
def test_golden_vector_matches(key, vectors, computed):
    error = parity_error(computed[key], vectors[key])
    assert not error, f"{key}: {error}"


@pytest.mark.parametrize("weight, untouched", [
    ("sam_mask_decoder.output_upscaling.0.weight", "enc."),  # the mask decoder: masks change
    # the temporal adapter: everything downstream
    ("image_encoder.trunk.blocks.0.adapter.linear_down.weight", "update."),
])
def test_golden_parity_fails_when_a_weight_is_perturbed(golden_model, vectors, weight, untouched):
    """The comparison notices a model that differs by one perturbed weight tensor: every output that
    depends on it misses its golden vector, and the outputs that do not (prefix `untouched`) still match."""
    model = copy.deepcopy(golden_model)
    with torch.no_grad():
        model.get_parameter(weight).mul_(1.05)
        computed = run_reference_flow(model, vectors)
    missed = {key for key in OUTPUT_KEYS if parity_error(computed[key], vectors[key])}
    assert missed, f"perturbing {weight} went unnoticed"
    assert not {key for key in missed if key.startswith(untouched)}, sorted(missed)
    assert {"pred.low_res_masks", "track.3.pred_masks"} <= missed, sorted(missed)


def test_golden_bank_selection_scores_by_similarity_and_confidence(golden_model, vectors):
    bank = golden_bank(vectors)
    with torch.no_grad():
        features = golden_model.encode_images(vectors["enc.input"]).features
    sims = image_key(features) @ torch.stack([vectors[f"bank.{j}.image_embed"] for j in range(BANK_SIZE)]).t()
    sims = sims / torch.stack([vectors[f"bank.{j}.image_embed"].norm() for j in range(BANK_SIZE)])
    confident = torch.tensor([vectors[f"bank.{j}.iou"].item() for j in range(BANK_SIZE)]).sigmoid()
    expected = (sims.clamp(min=0) + confident).topk(2, dim=1).indices
    assert torch.equal(bank.select(features), expected)
