"""DocVQA ANLS, hand-checked against lmms-eval's arithmetic (lmms_eval/api/metrics.py `anls`)."""

import pytest

from zaya_vl.eval_vl import ItemError, score_prediction
from zaya_vl.eval_vl.metrics import anls, levenshtein_distance


def docvqa_item(answers, question_id="7"):
    return {"questionId": question_id, "question": "q?", "question_types": ["form"], "image": None, "answers": answers}


@pytest.mark.parametrize(
    "a, b, distance",
    [("", "", 0), ("abc", "", 3), ("kitten", "sitting", 3), ("flaw", "lawn", 2), ("$1,234", "$1,243", 2)],
)
def test_levenshtein_distance(a, b, distance):
    assert levenshtein_distance(a, b) == distance
    assert levenshtein_distance(b, a) == distance


def test_case_and_whitespace_are_normalised():
    assert score_prediction("docvqa", docvqa_item(["March 5, 1998"]), "  march   5, 1998 \n") == 1.0


def test_punctuation_is_not_normalised():
    # "$1,234" vs "1234": 2 deletions / max(len 4, len 6) = 1/3 -> 0.6667
    assert score_prediction("docvqa", docvqa_item(["1234"]), "$1,234") == pytest.approx(1 - 2 / 6)


def test_empty_and_missing_prediction_score_zero():
    assert score_prediction("docvqa", docvqa_item(["abc"]), "") == 0.0
    assert score_prediction("docvqa", docvqa_item(["abc"]), "   ") == 0.0
    assert score_prediction("docvqa", docvqa_item(["abc"]), None) == 0.0


def test_best_over_multiple_gold_answers():
    answers = ["1998", "March 1998"]
    assert score_prediction("docvqa", docvqa_item(answers), "march 1998") == 1.0
    # "199" vs "1998": 1 / 4 -> 0.75; vs "March 1998": 7 / 10 -> 0.3; best is 0.75.
    assert score_prediction("docvqa", docvqa_item(answers), "199") == pytest.approx(0.75)


def test_threshold_half_is_kept_below_half_is_zero():
    assert anls("abcd", ["abxy"]) == pytest.approx(0.5)  # 2 / 4 -> exactly 0.5 is kept
    assert anls("abcde", ["abxyz"]) == 0.0  # 3 / 5 -> 0.4 < 0.5 -> 0


def test_lengths_are_raw_answer_and_stripped_prediction():
    # lmms-eval divides by max(len(raw answer), len(stripped prediction)): the answer's padding counts.
    # " 1998 " normalises to "1998", distance to "1999" is 1, divided by 6 -> 0.8333 (the official
    # DocVQA scorer divides by the normalised length 4 -> 0.75).
    assert anls("1999", [" 1998 "]) == pytest.approx(1 - 1 / 6)
    # ...whereas padding on the prediction is stripped before anything is measured.
    assert anls("  1999  ", ["1998"]) == pytest.approx(0.75)


def test_missing_answers_names_field_and_id():
    with pytest.raises(ItemError, match=r"item 42: missing field 'answers'"):
        score_prediction("docvqa", docvqa_item(None, question_id="42"), "x")
    with pytest.raises(ItemError, match="'answers' is empty"):
        score_prediction("docvqa", docvqa_item([], question_id="42"), "x")


def test_unknown_task_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown task 'textvqa'.*docvqa.*ai2d.*mathvista"):
        score_prediction("textvqa", {}, "x")
