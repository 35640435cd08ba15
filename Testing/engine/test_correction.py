"""The local click correction of box-only models (samed2.correction), on masks whose model answers are
given: what each click asks the model, and which part of the answer it takes. (Through the session
with MedSAM-Lite's real weights: test_medsam_lite_session.py.)"""
import numpy as np

from samed2.correction import LocalCorrection

SCALE = (2.0, 2.0)  # model pixels per slice pixel
BOX = (15.0, 25.0, 64.0, 74.0)


def square():
    mask = np.zeros((100, 100), bool)
    mask[30:70, 20:60] = True  # rows 30..69, columns 20..59
    return mask


class Answers:
    """The model's answer to each (box, clicks) asked, recorded."""

    def __init__(self, answer):
        self.answer, self.asked = answer, []

    def __call__(self, box, clicks):
        self.asked.append((tuple(box), list(clicks)))
        return self.answer.copy()


def test_correct_exclude_click_near_the_edge_removes_a_small_region_at_the_click():
    mask = square()
    answer = mask.copy()
    answer[47:53, 20:24] = False  # 24 pixels at the left edge, where the click is (2 pixels in)
    answer[31:33, 50:52] = False  # elsewhere: not the click's
    model = Answers(answer)

    corrected = LocalCorrection().corrected(mask, [(21.0, 50.0, False)], model, SCALE, BOX)

    assert model.asked == [(BOX, [(21.0, 50.0, False)])]  # the mask's box and the click
    expected = mask.copy()
    expected[47:53, 20:24] = False
    np.testing.assert_array_equal(corrected, expected)


def test_correct_exclude_click_refuses_an_answer_far_wider_than_the_error():
    mask = square()
    answer = mask.copy()
    answer[:, 20:40] = False  # half the organ, for a click 2 pixels from its edge
    corrected = LocalCorrection().corrected(mask, [(21.0, 50.0, False)], Answers(answer), SCALE, BOX)
    np.testing.assert_array_equal(corrected, mask)


def test_correct_include_click_adds_the_answer_connected_to_it_from_a_box_around_it():
    mask = square()
    answer = np.zeros_like(mask)
    answer[45:56, 62:73] = True  # a blob around the click, 2 pixels off the mask
    answer[5:10, 5:10] = True  # elsewhere
    model = Answers(answer)

    corrected = LocalCorrection(click_box=16.0).corrected(mask, [(67.0, 50.0, True)], model, SCALE, BOX)

    assert model.asked == [((59.0, 42.0, 75.0, 58.0), [])]  # 16 model pixels (8 slice pixels) each way
    np.testing.assert_array_equal(corrected, mask | (np.arange(100)[:, None] >= 45) & (np.arange(100)[:, None] < 56)
                                  & (np.arange(100) >= 62) & (np.arange(100) < 73))


def test_correct_clicks_apply_in_turn_and_a_click_already_satisfied_changes_nothing():
    mask = square()
    answer = mask.copy()
    answer[47:53, 20:24] = False
    once = LocalCorrection().corrected(mask, [(21.0, 50.0, False)], Answers(answer), SCALE, BOX)
    twice = LocalCorrection().corrected(once, [(21.0, 50.0, False), (40.0, 50.0, True)], Answers(answer),
                                        SCALE, BOX)
    np.testing.assert_array_equal(twice, once)
