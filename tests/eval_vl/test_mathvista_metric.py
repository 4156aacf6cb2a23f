"""MathVista deterministic scoring, hand-checked; where lmms-eval differs, the test says so."""

import pytest

from zaya_vl.eval_vl import ItemError, score_prediction
from zaya_vl.eval_vl.mathvista_answer import extract_choice, extract_number, mathvista_is_correct, numbers_in


def item(answer, answer_type, question_type="free_form", choices=None, precision=None, unit=None, pid="9"):
    return {"pid": pid, "question": "q", "query": "Hint: ...\nQuestion: q", "choices": choices, "unit": unit,
            "precision": precision, "answer": answer, "question_type": question_type, "answer_type": answer_type,
            "metadata": {"task": "math word problem", "skills": ["arithmetic reasoning"]}}


def score(row, reply):
    return score_prediction("mathvista", row, reply)


ONE_PLACE = item("1.2", "float", precision=1.0)  # the hub stores precision as float64
TWO_PLACES = item("1.45", "float", precision=2.0, unit="$")


@pytest.mark.parametrize(
    "reply, expected",
    [("1.2", 1.0), ("1.24", 1.0), ("1.16", 1.0), ("1.26", 0.0), ("1.14", 0.0), ("The answer is 1.2 m.", 1.0), ("1.20", 1.0), ("12", 0.0)],
)
def test_float_precision_one(reply, expected):
    # lmms-eval scores every one of these 0: round(value, 1.0) raises TypeError -> prediction None.
    assert score(ONE_PLACE, reply) == expected


@pytest.mark.parametrize(
    "reply, expected",
    [("1.45", 1.0), ("1.454", 1.0), ("$1.45", 1.0), ("1.4", 0.0), ("1.5", 0.0), ("1.46", 0.0), ("1.456", 0.0)],
)
def test_float_precision_two(reply, expected):
    assert score(TWO_PLACES, reply) == expected


def test_float_without_precision_uses_the_answers_decimals():
    assert score(item("0.75", "float", precision=None), "0.754") == 1.0
    assert score(item("0.75", "float", precision=float("nan")), "0.76") == 0.0


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("1000", 1.0),
        ("1,000 g", 1.0),  # thousands separator and the item's unit
        ("1000g", 1.0),
        ("1000.0", 1.0),
        ("The answer is 1000 grams.", 1.0),
        ("About 1,000.", 1.0),
        ("999.6", 0.0),  # not rounded
        ("100", 0.0),
        ("", 0.0),
    ],
)
def test_integer_with_unit(reply, expected):
    assert score(item("1000", "integer", unit="g"), reply) == expected


def test_integer_is_not_truncated():
    # lmms-eval's str(int(float("2.7"))) == "2" would count this as correct.
    assert score(item("2", "integer"), "2.7") == 0.0


def test_integer_from_reasoning_reply():
    reasoning = "There are 3 red cubes and 4 blue ones, so 3 + 4 = 7."
    assert score(item("7", "integer"), reasoning) == 1.0
    assert score(item("7", "integer"), reasoning + "\nThe answer is 7") == 1.0
    assert score(item("3", "integer"), "To answer this, count: 3 + 4 = 7.") == 0.0  # "answer this" is no cue
    assert score(item("7", "integer"), "Final Answer: 7 (3 + 4)") == 1.0  # first number after the cue


def test_boxed_fraction():
    assert score(item("0.75", "float", precision=2.0), "So x = \\boxed{\\frac{3}{4}}") == 1.0
    assert score(item("0.75", "float", precision=2.0), "3/4") == 1.0


ANGLES = ["135°", "140°", "145°", "150°"]


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("C", 1.0),
        ("(C)", 1.0),
        ("C.", 1.0),
        ("C. 145°", 1.0),
        ("(C) 145°", 1.0),
        ("145°", 1.0),  # the option text instead of the letter
        ("145°.", 1.0),
        ("The answer is C.", 1.0),
        ("Answer: (C) 145°", 1.0),
        ("The angle is 145°", 1.0),  # exactly one option text mentioned
        ("B", 0.0),
        ("F", 0.0),  # no 6th option
        ("140° or 145°", 0.0),  # two options mentioned: no guess
        ("", 0.0),
    ],
)
def test_multi_choice(reply, expected):
    assert score(item("145°", "text", "multi_choice", ANGLES), reply) == expected


def test_multi_choice_text_case_and_punctuation():
    yes_no = item("No", "text", "multi_choice", ["Yes", "No"])
    assert score(yes_no, "no.") == 1.0
    assert score(yes_no, "Yes") == 0.0
    # lmms-eval picks the option nearest to "" by edit distance -- the shortest, "No" -- and scores 1.
    assert score(yes_no, "") == 0.0


def test_multi_choice_longer_option_wins_over_its_prefix():
    times = ["half", "quarter", "quarter past"]
    assert score(item("quarter past", "text", "multi_choice", times), "It is quarter past eight.") == 1.0
    assert score(item("quarter", "text", "multi_choice", times), "It is quarter past eight.") == 0.0
    assert score(item("quarter", "text", "multi_choice", times), "quarter") == 1.0


def test_multi_choice_numeric_options_need_whole_numbers():
    options = ["8", "18", "8.5"]
    assert extract_choice("The length is 18", options) == "18"
    assert extract_choice("The length is 8.5", options) == "8.5"
    assert extract_choice("The length is 8", options) == "8"


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("[2007, 2008]", 1.0),
        ("The answer is [2007,2008].", 1.0),
        ("Answer: 2007, 2008", 1.0),
        ("[2008, 2007]", 0.0),
        ("[2007, 2008, 2009]", 0.0),
        ("2007 and 2008", 0.0),  # no list and no cue: nothing extracted
    ],
)
def test_list(reply, expected):
    assert score(item("[2007, 2008]", "list"), reply) == expected


def test_numbers_in_reads_signs_separators_and_glued_units():
    assert numbers_in("−3 and 1,234.5kg at 45%") == [-3.0, 1234.5, 45.0]
    assert numbers_in("x2 v1.2") == []
    assert extract_number("面积是13") == 13.0


def test_missing_fields_name_field_and_id():
    with pytest.raises(ItemError, match="item 9: missing field 'answer'"):
        score(item(None, "integer"), "3")
    with pytest.raises(ItemError, match="item 9: missing field 'choices'"):
        score(item("A", "text", "multi_choice", None), "A")


# --- runaway replies: bounded memory and work ------------------------------------------------------------
_RUNAWAY = {
    "cues on one line": "The answer is 1/2 " * 250_000,  # ~4.5 MB; each cue used to copy the rest of the reply
    "fractions and numbers": "1/2 3 " * 700_000,  # every number used to be checked against every fraction
    "nested options": "quarter past " * 300_000,  # every short-option span against every longer one
}


@pytest.mark.parametrize("name", list(_RUNAWAY))
def test_multi_megabyte_reply_is_read_in_bounded_memory(name):
    import tracemalloc

    reply = _RUNAWAY[name] + "\nThe answer is 7 (B)"
    calls = [
        dict(question_type="free_form", answer_type="integer", answer="7", choices=None),
        dict(question_type="free_form", answer_type="float", answer="7.0", choices=None),
        dict(question_type="free_form", answer_type="list", answer="[7]", choices=None),
        dict(question_type="multi_choice", answer_type="text", answer="quarter past",
             choices=["quarter", "quarter past", "half past"]),
    ]
    tracemalloc.start()
    try:
        results = [mathvista_is_correct(reply, places=1, **call) for call in calls]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The reply itself is ~4 MB; a few transient copies of it are fine, a copy per cue (23 GB) is not.
    assert peak < 8 * len(reply), (name, peak)
    assert results == [True, True, True, True]  # the final answer, at the end, is what is read


def test_long_reply_is_read_as_head_and_tail():
    from zaya_vl.eval_vl.mathvista_answer import REPLY_HEAD, REPLY_TAIL, bounded

    reply = "B. because " + "x " * 100_000 + "so the total is 12"
    kept = bounded(reply)
    assert len(kept) == REPLY_HEAD + REPLY_TAIL + 1 and kept.startswith("B. because") and kept.endswith("is 12")
    assert mathvista_is_correct(reply, question_type="multi_choice", answer_type="text", answer="8",
                                choices=["6", "8"], places=0)
    assert mathvista_is_correct(reply, question_type="free_form", answer_type="integer", answer="12",
                                choices=None, places=0)
