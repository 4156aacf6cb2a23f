"""AI2D letter scoring: lmms-eval's exact mode (headline) and our lenient mode."""

import pytest

from zaya_vl.eval_vl import ItemError, TASKS, score_prediction
from zaya_vl.eval_vl.metrics import ai2d_exact_match, ai2d_lenient_letter

ITEM = {"question": "Which part absorbs water?", "options": ["leaf", "root", "stem", "flower"], "answer": "1", "image": None}


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("B", 1.0),
        ("B.", 1.0),
        ("B. root", 1.0),  # lmms-eval's regex ^\s*([A-Z])\. takes the letter
        ("  B. root", 1.0),
        ("(B)", 1.0),  # punctuation removed -> "b"
        ("**B**", 1.0),
        (" b \n", 1.0),  # reply stripped, case ignored
        ("b. root", 0.0),  # the regex wants a capital; "b root" != "b"
        ("B root", 0.0),
        ("B .", 0.0),  # inner whitespace survives: "b " != "b"
        ("The answer is B", 0.0),
        ("root", 0.0),
        ("A. B", 0.0),
        ("", 0.0),
        (None, 0.0),
    ],
)
def test_exact_mode_matches_lmms_eval(reply, expected):
    assert score_prediction("ai2d", ITEM, reply) == expected
    assert ai2d_exact_match(reply, "B") == expected


@pytest.mark.parametrize(
    "reply, letter",
    [
        ("B", "B"),
        ("(b)", "B"),
        ("B) root", "B"),
        ("(B) root", "B"),
        ("B: root", "B"),
        ("The answer is B", "B"),
        ("Answer: (B).", "B"),
        ("The correct option is B, the root.", "B"),
        ("root", "B"),  # option text instead of the letter
        ("Root.", "B"),
        ("It is the root that absorbs water.", "B"),  # exactly one option mentioned
        ("leaf or root", None),  # two options mentioned: no guess
        ("E", None),  # outside the 4 options
        ("The answer is E", None),
        ("", None),
        ("I am not sure", None),
    ],
)
def test_lenient_letter(reply, letter):
    assert ai2d_lenient_letter(reply, ITEM["options"]) == letter


def test_lenient_score_is_reported_beside_exact():
    task = TASKS["ai2d"]
    assert task.score(ITEM, "The answer is B") == 0.0
    assert task.extra_scores(ITEM, "The answer is B") == {"lenient": 1.0}
    assert task.extra_scores(ITEM, "The answer is C") == {"lenient": 0.0}


@pytest.mark.parametrize("reply", ["B", "B.", "B. root", "(B)", "**B**", " b ", "A", "x"])
def test_lenient_never_below_exact(reply):
    exact = ai2d_exact_match(reply, "B")
    lenient = 1.0 if ai2d_lenient_letter(reply, ITEM["options"]) == "B" else 0.0
    assert lenient >= exact


def test_bad_items_name_field_and_problem():
    with pytest.raises(ItemError, match="missing field 'options'"):
        score_prediction("ai2d", {"question": "q", "answer": "0"}, "A")
    with pytest.raises(ItemError, match="answer index 4 outside 4 options"):
        score_prediction("ai2d", dict(ITEM, answer="4"), "A")
    with pytest.raises(ItemError, match="not an option index"):
        score_prediction("ai2d", dict(ITEM, answer="B"), "A")
