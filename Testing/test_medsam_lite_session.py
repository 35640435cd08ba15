"""MedSAM-Lite in the interactive session: boxes and clicks, several objects, cached and background
encoding, and the strategy checks of a memory-less model. (Accuracy: test_medsam_lite_accuracy.py.)"""
import numpy as np
import pytest

from samed2.bank import ConfidenceBank
from samed2.errors import InputError
from samed2.model_io import mask_box
from samed2.session import Session
from samed2.volume_files import load_volume
from samed2_tools.evaluate import dice

LIVER, SPLEEN, AORTA = 5, 1, 52


@pytest.fixture(scope="module")
def ct_labels(data_dir):
    return load_volume(data_dir / "totalseg" / "example_ct_sm.nii.gz"), \
        load_volume(data_dir / "totalseg" / "example_seg.nii.gz").array


def test_lite_session_boxes_clicks_and_several_objects_on_one_slice(lite_model, ct_labels):
    volume, labels = ct_labels
    k = 15
    truth = {value: labels[k] == value for value in (LIVER, SPLEEN, AORTA)}
    with Session(volume, lite_model, axis=2) as session:
        assert session.slice_shape == (101, 122)  # not square: the letterbox geometry matters
        masks = session.add_prompts(k, {LIVER: ((), mask_box(truth[LIVER])), SPLEEN: ((), mask_box(truth[SPLEEN]))})
        assert dice(masks[LIVER], truth[LIVER]) > 0.9 and dice(masks[SPLEEN], truth[SPLEEN]) > 0.9
        assert k in session.cache and len(session.cache) == 1  # both objects decoded from one embedding

        # clicks go with a box; alone they are refused (the model was trained on boxes only). A negative
        # click beside the liver keeps the box's mask (Dice measured 0.879: the model never saw clicks)
        outside = (float(np.nonzero(truth[LIVER].any(0))[0].max() + 4), 50.0, False)
        with_click = session.add_prompt(LIVER, k, points=[outside])
        assert dice(with_click, truth[LIVER]) > 0.85
        assert session.objects[LIVER].prompts[k].box is not None and len(session.objects[LIVER].prompts[k].points) == 1
        rows, cols = np.nonzero(truth[AORTA])
        with pytest.raises(InputError, match="box prompts only"):
            session.add_prompt(AORTA, k, points=[(cols.mean(), rows.mean(), True)])
        assert AORTA not in session.objects or not session.objects[AORTA].prompts


def test_lite_session_encodes_ahead_in_the_background(lite_model, ct_labels):
    volume, _ = ct_labels
    with Session(volume, lite_model, axis=2) as session:
        session.precompute(10, radius=2)
        session.wait_idle()
        assert sorted(i for i in range(volume.num_slices(2)) if i in session.cache) == [8, 9, 10, 11, 12]


def test_lite_session_propagates_by_box_chain_only_and_without_a_bank(lite_model, ct_labels):
    volume, _ = ct_labels
    with Session(volume, lite_model, axis=2) as session:
        assert session.strategy == "box-chain"
    for strategy in ("track", "hybrid"):
        with pytest.raises(InputError, match="needs a model with memory"):
            Session(volume, lite_model, axis=2, strategy=strategy)
    with pytest.raises(InputError, match="confidence bank needs a model with memory"):
        Session(volume, lite_model, axis=2, bank=ConfidenceBank.empty(256, (64, 16, 16)))
