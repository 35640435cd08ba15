"""The interactive session with real weights layouts on the real CT: cache, pairs, prompts, propagation
mechanics, cancel, corrections and out-of-memory fallback (model quality is tested with the trained model)."""
import logging
import threading

import numpy as np
import pytest
import torch

from samed2.choices import PropagationOptions
from samed2.errors import InputError
from samed2.session import Session

from suite import object_score_says


@pytest.fixture
def session(ct_volume, tiny_model):
    with Session(ct_volume, tiny_model, axis=2, device="cpu") as s:
        yield s


def count_encodes(model):
    calls = []
    encode = model.encode_images

    def counting(images, *encoder):
        calls.append(images.shape[0])
        return encode(images, *encoder)
    model.encode_images = counting
    return calls


def test_session_encodes_fixed_pairs_whatever_the_click_order(ct_volume, tiny_model):
    with Session(ct_volume, tiny_model, device="cpu") as first, Session(ct_volume, tiny_model, device="cpu") as second:
        first.add_prompt(1, 5, box=(30, 30, 80, 70))
        second.add_prompt(1, 4, box=(30, 30, 80, 70))  # encodes (4, 5) too
        second_mask = second.add_prompt(2, 5, box=(30, 30, 80, 70))
        assert 4 in first.features.cache and 5 in first.features.cache
        a, b = first.features.cache.get(5, "cpu"), second.features.cache.get(5, "cpu")
        assert torch.equal(a.features, b.features)
        assert np.array_equal(first.objects[1].masks[5], second_mask)


def test_session_last_odd_slice_is_paired_with_itself(ct_volume, tiny_model):
    calls = count_encodes(tiny_model)
    with Session(ct_volume, tiny_model, axis=1, device="cpu") as s:  # 101 coronal slices
        assert s.num_slices == 101
        mask = s.add_prompt(1, 100, box=(20, 5, 100, 25))
        assert calls == [2] and len(s.features.cache) == 1 and 100 in s.features.cache
        assert mask.shape == (30, 122)


def test_session_cache_honours_its_byte_budget(ct_volume, tiny_model):
    with Session(ct_volume, tiny_model, device="cpu") as probe:
        probe.add_prompt(1, 0, box=(30, 30, 80, 70))
        per_slice = probe.features.cache.nbytes // len(probe.features.cache)
    budget = int(per_slice * 5.5)
    with Session(ct_volume, tiny_model, device="cpu", cache_bytes=budget) as s:
        s.add_prompt(1, 0, box=(30, 30, 80, 70))  # the cache now knows a slice's size
        s.precompute(15, radius=6)
        s.wait_idle()
        assert 0 < s.features.cache.nbytes <= budget
        cached = set(s.features.cache._items)
        assert {14, 15, 16, 17} <= cached and not cached & {12, 13, 18, 19}, "the nearest whole pairs that fit"
        for index in range(18, 30):
            s.add_prompt(1, index, box=(30, 30, 80, 70))
            assert s.features.cache.nbytes <= budget
        assert set(s.features.cache._items) <= set(range(24, 30)), "least recently used slices were evicted"


def test_session_background_precompute_spares_the_click(session, tiny_model):
    calls = count_encodes(tiny_model)
    session.precompute(20, radius=3)
    session.wait_idle()
    assert {17, 18, 19, 20, 21, 22, 23} <= set(session.features.cache._items)
    before = len(calls)
    session.add_prompt(1, 21, points=[(60, 50, True)])
    assert len(calls) == before, "a click on a precomputed slice must not run the encoder"
    assert all(batch % 2 == 0 for batch in calls), "SAMed-2 encodes whole pairs"


def test_session_precompute_runs_on_one_background_thread(session, tiny_model):
    threads = set()
    encode = tiny_model.encode_images

    def recording(images, *encoder):
        threads.add(threading.current_thread().name)
        return encode(images, *encoder)
    tiny_model.encode_images = recording
    session.precompute(10, radius=4)
    session.add_prompt(1, 3, box=(30, 30, 80, 70))
    session.wait_idle()
    assert threads == {"samed2-torch"}


def test_session_prompts_points_boxes_and_several_objects(session):
    box_mask = session.add_prompt(1, 15, box=(20, 20, 100, 80))
    assert box_mask.shape == session.slice_shape and box_mask.dtype == bool
    refined = session.add_prompt(1, 15, points=[(40, 40, True), (90, 70, False)])
    assert session.objects[1].prompts[15].points == [(40.0, 40.0, True), (90.0, 70.0, False)]
    assert session.objects[1].prompts[15].box == (20.0, 20.0, 100.0, 80.0)
    other = session.add_prompt(2, 15, points=[(60, 30, True)])
    assert set(session.objects) == {1, 2}
    assert np.array_equal(session.objects[1].masks[15], refined)
    assert np.array_equal(session.objects[2].masks[15], other)
    assert session.label_volume().shape == session.volume.array.shape


@pytest.mark.parametrize("prompt, message", [
    (dict(points=[(500, 10, True)]), "outside"),
    (dict(box=(10, 10, 10, 40)), "zero"),
    (dict(), "at least one point or a box"),
])
def test_session_refuses_bad_prompts(session, prompt, message):
    with pytest.raises(InputError, match=message):
        session.add_prompt(1, 10, **prompt)
    with pytest.raises(InputError, match="outside the volume"):
        session.add_prompt(1, 99, points=[(10, 10, True)])


def test_propagation_directions_and_limits(session):
    session.add_prompt(1, 15, box=(20, 20, 100, 80))
    up = [r.index for r in session.propagate(options=PropagationOptions("up", stop=20, stop_after_absent=0))]
    assert up == [16, 17, 18, 19, 20]
    session.add_prompt(2, 15, box=(20, 20, 100, 80))
    down = [r.index for r in session.propagate([2], PropagationOptions("down", start=11, stop_after_absent=0))]
    assert down == [14, 13, 12, 11]
    session.add_prompt(3, 15, box=(20, 20, 100, 80))
    both = [r.index for r in session.propagate([3], PropagationOptions(stop_after_absent=0))]
    assert sorted(both) == [i for i in range(session.num_slices) if i != 15]
    assert sorted(session.objects[3].masks) == list(range(session.num_slices))  # a mask kept for every slice


def test_propagation_stops_after_absent_slices(ct_volume, tiny_model):
    """A model that says "absent" on every slice stops after exactly `stop_after_absent` slices."""
    object_score_says(tiny_model, present=False)
    with Session(ct_volume, tiny_model, axis=2, device="cpu", strategy="track") as session:
        session.add_prompt(1, 15, box=(20, 20, 100, 80))
        results = list(session.propagate(options=PropagationOptions("up", stop_after_absent=2)))
    assert [(r.index, r.present) for r in results] == [(16, False), (17, False)]
    assert not any(r.mask.any() for r in results)  # an absent object leaves its slices empty


def test_propagation_runs_until_the_first_run_of_absent_slices(session):
    """Whatever the model says, the walk ends exactly after its first `stop_after_absent` absent slices
    in a row, or at the volume's edge."""
    session.add_prompt(1, 15, box=(20, 20, 100, 80))
    results = list(session.propagate(options=PropagationOptions("up", stop_after_absent=2)))
    indices, present = [r.index for r in results], [r.present for r in results]
    assert indices == list(range(16, 16 + len(results)))
    pairs = [i for i in range(1, len(present)) if not present[i - 1] and not present[i]]
    assert len(results) == (pairs[0] + 1 if pairs else session.num_slices - 16)


def test_propagation_cancel_keeps_a_consistent_partial_result(session):
    session.add_prompt(1, 5, box=(20, 20, 100, 80))
    cancel = threading.Event()
    seen = []
    for result in session.propagate(options=PropagationOptions("up", stop_after_absent=0), cancel=cancel):
        seen.append(result.index)
        if len(seen) == 3:
            cancel.set()
    assert seen == [6, 7, 8]
    assert set(session.objects[1].masks) == {5, 6, 7, 8}
    assert set(session.objects[1].non_cond) == {6, 7, 8}
    assert session.objects[1].dirty == {5}, "a cancelled run is resumed by the next propagation"


def test_propagation_corrections_never_overwrite_prompted_or_edited_slices(session):
    session.add_prompt(1, 10, box=(20, 20, 100, 80))
    list(session.propagate(options=PropagationOptions(stop_after_absent=0)))
    edited = np.zeros(session.slice_shape, dtype=bool)
    edited[30:50, 40:70] = True
    session.set_mask(1, 20, edited)
    corrected = session.add_prompt(1, 14, points=[(50, 50, True)])
    rerun = [r.index for r in session.propagate(options=PropagationOptions(stop_after_absent=0))]
    assert 10 not in rerun and 14 not in rerun and 20 not in rerun
    assert rerun, "re-propagation runs from the corrected slices"
    assert np.array_equal(session.objects[1].masks[20], edited)
    assert np.array_equal(session.objects[1].masks[14], corrected)
    # from 14 and 20 outward, half way to their fixed neighbours (10, 14, 20); 11-12 keep 10's result
    assert sorted(rerun) == [13, 15, 16, 17, 18, 19, *range(21, 30)]


def test_session_out_of_memory_halves_the_encoder_batch(ct_volume, tiny_model, caplog):
    encode = tiny_model.encode_images

    def small_memory(images, *encoder):
        if images.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (forced by the test)")
        return encode(images, *encoder)
    tiny_model.encode_images = small_memory
    with Session(ct_volume, tiny_model, device="cpu", encode_batch=8) as s, caplog.at_level(logging.WARNING):
        s.precompute(10, radius=3)
        s.wait_idle()
        assert s.features.encode_batch == 2
        assert "retrying" in caplog.text
        assert len(s.features.cache) >= 7


def test_session_out_of_memory_on_the_device_falls_back_to_cpu(ct_volume, tiny_model, caplog):
    encode = tiny_model.encode_images

    def device_full(images, *encoder):
        if images.device.type != "cpu":
            raise torch.OutOfMemoryError("out of memory (forced by the test)")
        return encode(images, *encoder)
    tiny_model.encode_images = device_full
    with Session(ct_volume, tiny_model, device="cpu") as s, caplog.at_level(logging.WARNING):
        s.features.device = torch.device("meta")  # stands for an accelerator whose memory is full
        mask = s.add_prompt(1, 12, box=(20, 20, 100, 80))
        assert s.features.device.type == "cpu"
        assert "continuing on the CPU" in caplog.text
        assert mask.shape == s.slice_shape


def count_track_steps(model):
    """Batch size of every model.track_step call."""
    calls = []
    track_step = model.track_step

    def counting(frame_idx, image, *args, **kwargs):
        calls.append(image.features.shape[0])
        return track_step(frame_idx, image, *args, **kwargs)
    model.track_step = counting
    return calls


# one click (multimask output), box + two clicks, a box: different lengths, padded in the batch
SEVERAL = {1: ([(60, 50, True)], None),
           2: ([(40, 40, True), (90, 70, False)], (20, 20, 100, 80)),
           3: ((), (30, 30, 80, 70))}
REFINE = {1: ([(70, 60, False)], None), 2: ([(50, 45, True)], None), 3: ([(45, 40, True), (60, 50, True)], None)}


def assert_same_object(a, b, index):
    """The same result on a slice, up to float noise (one bfloat16 step in the stored memory features)."""
    assert np.array_equal(a.masks[index], b.masks[index])
    assert torch.allclose(a.logits[index], b.logits[index], atol=1e-5)
    assert (index in a.pending) == (index in b.pending)
    if index in a.pending:  # a prompted slice: its memory is encoded when propagation needs it
        return
    memory_a, memory_b = (o.cond.get(index) or o.non_cond[index] for o in (a, b))
    for got, expected in zip(vars(memory_a).values(), vars(memory_b).values()):
        rtol = 2 ** -7 if got.dtype == torch.bfloat16 else 1e-5
        assert torch.allclose(got.float(), expected.float(), rtol=rtol, atol=1e-5)


def test_add_prompts_decodes_objects_together_as_one_at_a_time(ct_volume, tiny_model):
    with (Session(ct_volume, tiny_model, device="cpu") as alone,
          Session(ct_volume, tiny_model, device="cpu") as together):
        for prompts in (SEVERAL, REFINE):  # the second round refines with the first round's logits
            expected = {obj_id: alone.add_prompt(obj_id, 15, points, box) for obj_id, (points, box) in prompts.items()}
            calls = count_track_steps(tiny_model)
            masks = together.add_prompts(15, prompts)
            del tiny_model.track_step
            assert calls == [3], "one batched model call"
            assert masks.keys() == expected.keys()
            for obj_id in prompts:
                assert np.array_equal(masks[obj_id], expected[obj_id])
                assert together.objects[obj_id].prompts[15] == alone.objects[obj_id].prompts[15]
                assert_same_object(together.objects[obj_id], alone.objects[obj_id], 15)


def test_add_prompts_refuses_bad_input_and_changes_nothing(session):
    session.add_prompt(1, 10, box=(20, 20, 100, 80))
    before = session.objects[1].prompts[10]
    with pytest.raises(InputError, match="outside"):
        session.add_prompts(10, {1: ([(40, 40, True)], None), 2: ([(500, 10, True)], None)})
    with pytest.raises(InputError, match="outside"):
        session.add_prompt(1, 10, points=[(40, 40, True), (500, 10, True)])
    with pytest.raises(InputError, match="no prompts"):
        session.add_prompts(10, {})
    assert session.objects[1].prompts[10] == before and set(session.objects) == {1}


def test_propagation_tracks_objects_prompted_on_one_slice_in_lockstep(ct_volume, tiny_model):
    with (Session(ct_volume, tiny_model, device="cpu") as alone,
          Session(ct_volume, tiny_model, device="cpu") as together):
        for s in (alone, together):
            s.add_prompts(15, {obj_id: SEVERAL[obj_id] for obj_id in (1, 2)})
        options = PropagationOptions(start=9, stop=21, stop_after_absent=2)
        expected = [r for obj_id in (1, 2) for r in alone.propagate([obj_id], options)]
        calls = count_track_steps(tiny_model)
        results = list(together.propagate([1, 2], options))
        del tiny_model.track_step
        seen = {(r.obj_id, r.index) for r in results}
        assert seen == {(r.obj_id, r.index) for r in expected} and len(seen) == len(results)
        for r in results:
            assert_same_object(together.objects[r.obj_id], alone.objects[r.obj_id], r.index)
        both = [i for i in range(9, 22) if (1, i) in seen and (2, i) in seen]
        assert both and calls.count(2) == len(both), "one batched call per slice both objects reach"
        assert len(calls) == len({r.index for r in results})
        assert not together.objects[1].dirty and not together.objects[2].dirty


def test_propagation_in_lockstep_falls_back_where_memories_differ(ct_volume, tiny_model):
    with (Session(ct_volume, tiny_model, device="cpu") as alone,
          Session(ct_volume, tiny_model, device="cpu") as together):
        for s in (alone, together):
            s.add_prompts(15, {obj_id: SEVERAL[obj_id] for obj_id in (1, 2)})
            list(s.propagate([1], PropagationOptions("up", stop=18, stop_after_absent=0)))  # only object 1: 16-18
            s.add_prompt(1, 15, points=[(70, 60, False)])
        options = PropagationOptions(start=12, stop=18, stop_after_absent=0)
        expected = [r for obj_id in (1, 2) for r in alone.propagate([obj_id], options)]
        calls = count_track_steps(tiny_model)
        results = list(together.propagate([1, 2], options))
        del tiny_model.track_step
        assert calls == [1] * 6 + [2] * 3, "one by one up to 18, together from 14 down (same memories again)"
        assert sorted((r.obj_id, r.index) for r in results) == sorted((r.obj_id, r.index) for r in expected)
        for r in results:
            assert_same_object(together.objects[r.obj_id], alone.objects[r.obj_id], r.index)


def fake_tracking(session, present_ids):
    """Replace the model's tracking: objects in `present_ids` are present, others absent; records the batches."""
    batches = []

    def track_slice(objs, index, step, bands):
        ids = [next(i for i, o in session.objects.items() if o is obj) for obj in objs]
        batches.append(ids)
        return [(np.ones(session.slice_shape, bool), obj_id in present_ids, 1.0) for obj_id in ids]
    session._track_slice = track_slice
    return batches


def test_propagation_in_lockstep_objects_stop_on_their_own(session):
    session.add_prompts(15, {obj_id: SEVERAL[obj_id] for obj_id in (1, 2)})
    batches = fake_tracking(session, present_ids={2})
    results = list(session.propagate(options=PropagationOptions("up", stop=19, stop_after_absent=2)))
    assert [(r.obj_id, r.index) for r in results] == [(1, 16), (2, 16), (1, 17), (2, 17), (2, 18), (2, 19)]
    assert batches == [[1, 2], [1, 2], [2], [2]]


def test_propagation_in_lockstep_cancels_between_slices(session):
    session.add_prompts(15, {obj_id: SEVERAL[obj_id] for obj_id in (1, 2)})
    batches = fake_tracking(session, present_ids={1, 2})
    cancel = threading.Event()
    seen = []
    for result in session.propagate(options=PropagationOptions("up", stop_after_absent=0), cancel=cancel):
        seen.append((result.obj_id, result.index))
        if len(seen) == 3:
            cancel.set()
    assert seen == [(1, 16), (2, 16), (1, 17), (2, 17)], "the slice under way is finished"
    assert batches == [[1, 2], [1, 2]]
    assert session.objects[1].dirty == session.objects[2].dirty == {15}


def one_entry_bank(ct_volume, tiny_model, index: int = 20):
    """A confidence bank holding one real slice's memory."""
    from samed2.bank import ConfidenceBank, image_key

    with Session(ct_volume, tiny_model, device="cpu") as s:
        s.add_prompt(1, index, box=(20, 20, 100, 80))
        memory = s.frame_memory(1, index)
        return ConfidenceBank(image_key(s.features.cache.get(index, "cpu").features), memory.features, memory.pos,
                              torch.tensor([0.9]))


@pytest.mark.parametrize("strategy", ["hybrid", "box-chain"])
def test_objects_together_as_one_at_a_time_with_the_bank(ct_volume, tiny_model, strategy):
    bank = one_entry_bank(ct_volume, tiny_model)
    with Session(ct_volume, tiny_model, device="cpu", bank=bank, strategy=strategy) as alone, \
            Session(ct_volume, tiny_model, device="cpu", bank=bank, strategy=strategy) as together:
        prompts = {obj_id: SEVERAL[obj_id] for obj_id in (2, 3)}
        for obj_id, (points, box) in prompts.items():
            alone.add_prompt(obj_id, 15, points, box)
        together.add_prompts(15, prompts)
        options = PropagationOptions(start=12, stop=18, stop_after_absent=0)
        expected = [r for obj_id in (2, 3) for r in alone.propagate([obj_id], options)]
        results = list(together.propagate([2, 3], options))
        assert sorted((r.obj_id, r.index) for r in results) == sorted((r.obj_id, r.index) for r in expected)
        for obj_id, index in [(r.obj_id, r.index) for r in results] + [(2, 15), (3, 15)]:
            assert_same_object(together.objects[obj_id], alone.objects[obj_id], index)


def test_a_click_runs_no_memory_encoder_propagation_encodes_the_prompted_slice(ct_volume, tiny_model):
    """Clicks decode only; the prompted slice's memory is encoded once, from its last prediction, when
    propagation first needs it, and equals what encoding it at click time would give."""
    encoded = []
    hook = tiny_model.memory_encoder.register_forward_hook(lambda module, args, out: encoded.append(1))
    try:
        with Session(ct_volume, tiny_model, device="cpu") as s:
            s.add_prompt(1, 15, box=(20, 20, 100, 80))
            s.add_prompt(1, 15, points=[(60, 50, True)])
            assert encoded == [] and 15 in s.objects[1].pending
            image = s.features.call(s.features.embedding, 15)
            with torch.no_grad():
                expected = tiny_model.frame_memory(image, s.objects[1].pending[15], from_points=True).stored()
            encoded.clear()
            list(s.propagate(options=PropagationOptions(start=14, stop=16)))
            assert 15 not in s.objects[1].pending
            assert len(encoded) == 1 + 2, "the prompted slice once, then each tracked slice"
            memory = s.frame_memory(1, 15)
    finally:
        hook.remove()
    assert torch.equal(memory.features, expected.features) and torch.equal(memory.obj_ptr, expected.obj_ptr)


def test_clicks_on_a_slice_share_its_bank_attention(ct_volume, tiny_model):
    """With a bank, the first-prompt memory attention depends on the slice only: computed once per slice
    and shared by later clicks and objects there, with the same masks as computing it each time."""
    bank = one_entry_bank(ct_volume, tiny_model)
    attended = []
    attend = tiny_model.attend_memory
    tiny_model.attend_memory = lambda *args, **kwargs: attended.append(1) or attend(*args, **kwargs)
    try:
        with Session(ct_volume, tiny_model, device="cpu", bank=bank, strategy="hybrid") as s:
            s.add_prompt(1, 15, box=(30, 30, 80, 70))
            s.add_prompt(1, 15, points=[(50, 50, True)])
            s.add_prompt(2, 15, points=[(60, 50, True)])
            kept = s.features._bank_attended[15]
            s.features._bank_attended.clear()  # the same click, attention computed afresh
            s.add_prompt(3, 15, points=[(60, 50, True)])
            fresh = s.features._bank_attended[15]
            logits = [s.objects[i].logits[15] for i in (2, 3)]
    finally:
        del tiny_model.attend_memory
    assert attended == [1, 1], "once for slice 15, once after the reset"
    assert torch.equal(kept, fresh)
    assert torch.equal(*logits)


def test_box_chain_prompts_the_box_of_the_previous_masks_largest_part(ct_volume, tiny_model):
    """A speck does not widen the next slice's box, and a one-pixel-thin mask still gives a box."""
    with Session(ct_volume, tiny_model, device="cpu", bank=one_entry_bank(ct_volume, tiny_model),
                 strategy="box-chain") as s:
        mask = np.zeros(s.slice_shape, dtype=bool)
        mask[40, 30:60] = True
        mask[5, 5] = True
        s.set_mask(1, 15, mask)
        boxes, prompt_tensors = [], s._prompt_tensors
        s._prompt_tensors = lambda prompts: boxes.append(prompts.box) or prompt_tensors(prompts)
        list(s.propagate([1], PropagationOptions("up", stop=16, stop_after_absent=0)))
    assert boxes[0] == (30, 39.5, 59, 40.5)


def test_precompute_chooses_bank_entries_and_attends_the_scrolled_to_slice(ct_volume, tiny_model):
    """With a bank, background encoding also picks each slice's entry (as a click would pick it) and
    prepares the scrolled-to slice's bank attention, so a first click there runs the decoder only,
    with the same mask as a session that did nothing ahead."""
    from samed2.bank import ConfidenceBank

    entries = [one_entry_bank(ct_volume, tiny_model, index) for index in (12, 17)]
    bank = ConfidenceBank(*(torch.cat([getattr(e, name) for e in entries])
                            for name in ("keys", "features", "pos", "ious")))
    attended = []
    attend = tiny_model.attend_memory
    tiny_model.attend_memory = lambda *args, **kwargs: attended.append(1) or attend(*args, **kwargs)
    try:
        with Session(ct_volume, tiny_model, device="cpu", bank=bank) as ahead, \
                Session(ct_volume, tiny_model, device="cpu", bank=bank) as cold:
            ahead.precompute(14, radius=2)
            ahead.wait_idle()
            assert sorted(ahead.features._bank_choice) == [12, 13, 14, 15, 16, 17]
            for index, choice in ahead.features._bank_choice.items():
                assert choice == int(bank.select(ahead.features.cache.get(index, "cpu").features, k=1)[0, 0])
            assert len(set(ahead.features._bank_choice.values())) > 1, "the slices do not all pick one entry"
            assert attended == [1] and 14 in ahead.features._bank_attended
            ahead.add_prompt(1, 14, box=(30, 30, 80, 70))
            assert attended == [1], "the click used the prepared attention"
            cold.add_prompt(1, 14, box=(30, 30, 80, 70))
            assert torch.equal(ahead.objects[1].logits[14], cold.objects[1].logits[14])
    finally:
        del tiny_model.attend_memory


def test_session_cache_keeps_the_slice_read_last_as_handed_out(ct_volume, tiny_model):
    """Clicks in a row on one slice skip the half-precision conversion; a new embedding for the slice
    replaces the kept copy."""
    with Session(ct_volume, tiny_model, axis=2, device="cpu") as s:
        s.precompute(10, radius=1)
        s.wait_idle()
        first = s.features.cache.get(10, "cpu")
        assert s.features.cache.get(10, "cpu") is first
        assert s.features.cache.get(11, "cpu") is not first and s.features.cache.get(10, "cpu") is not first
        again = s.features.cache.get(10, "cpu")
        s.features.cache.put(10, again)
        assert s.features.cache.get(10, "cpu") is not again
        assert torch.equal(s.features.cache.get(10, "cpu").features, again.features)
