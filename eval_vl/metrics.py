"""DocVQA ANLS and AI2D letter matching, as lmms-eval computes them (plus our lenient AI2D mode).

References (EvolvingLMMs-Lab/lmms-eval, commit 75571cf):
- `lmms_eval/api/metrics.py`: `levenshtein_distance`, `anls`, `exact_match_hf_evaluate`.
- `lmms_eval/api/task.py` `process_results`: every generate_until reply is `.strip()`ped (None -> "")
  before any metric sees it; filters run before that, on the raw reply.
- `lmms_eval/tasks/ai2d/{ai2d.yaml,utils.py}`: `MultiChoiceRegexFilter` then `exact_match` with
  ignore_case and ignore_punctuation.
"""

from __future__ import annotations

import re
import string

from zaya_vl.prompts import option_letters


def levenshtein_distance(a: str, b: str) -> int:
    """Plain edit distance (insert, delete, substitute all cost 1); two-row DP."""
    if len(a) > len(b):
        a, b = b, a
    previous = list(range(len(a) + 1))
    for j, char_b in enumerate(b, start=1):
        current = [j]
        for i, char_a in enumerate(a, start=1):
            cost = 0 if char_a == char_b else 1
            current.append(min(previous[i - 1] + cost, previous[i] + 1, current[i - 1] + 1))
        previous = current
    return previous[-1]


def _anls_normalise(text: str) -> str:
    # lmms-eval: " ".join(s.strip().lower().split())
    return " ".join(text.strip().lower().split())


def anls(prediction: str | None, answers: list[str], threshold: float = 0.5) -> float:
    """Average-normalised Levenshtein similarity for one question, lmms-eval's exact arithmetic.

    For each gold answer: distance between the *normalised* strings divided by the longer of the
    two *un-normalised* lengths (`max(len(answer.upper()), len(pred.upper()))`; the prediction is
    the stripped reply, the answer is raw). Score = 1 - min over answers; below `threshold` -> 0.
    The official DocVQA scorer divides by normalised lengths instead; the difference only shows
    when an answer carries extra whitespace (documented in tests).
    """
    prediction = "" if prediction is None else prediction.strip()
    normalised_prediction = _anls_normalise(prediction)
    values = []
    for answer in answers:
        distance = levenshtein_distance(_anls_normalise(answer), normalised_prediction)
        # .upper() kept on purpose: it can change a length (e.g. "ß" -> "SS"), and we match lmms-eval.
        length = max(len(answer.upper()), len(prediction.upper()))
        values.append(0.0 if length == 0 else distance / length)
    similarity = 1.0 - min(values)
    return 0.0 if similarity < threshold else similarity


# --- AI2D ---------------------------------------------------------------------------------------

# lmms-eval ai2d/utils.py MultiChoiceRegexFilter: a capital letter then a dot at the very start.
_LMMS_LETTER_AT_START = re.compile(r"^\s*([A-Z])\.")
_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)


def ai2d_exact_normalise(reply: str | None) -> str:
    """The string lmms-eval's exact_match compares: regex letter or the whole reply, then stripped,
    lower-cased, ASCII punctuation removed (inner whitespace is kept, so "a b" never equals "a")."""
    reply = "" if reply is None else reply
    match = _LMMS_LETTER_AT_START.match(reply)
    extracted = match.group(1) if match else reply
    return extracted.strip().lower().translate(_PUNCTUATION_TABLE)


def ai2d_exact_match(reply: str | None, gold_letter: str) -> float:
    """lmms-eval's AI2D score: "A", "A.", "A. text", "(A)", " a " score; "The answer is A" does not."""
    gold = gold_letter.strip().lower().translate(_PUNCTUATION_TABLE)
    return 1.0 if ai2d_exact_normalise(reply) == gold else 0.0


# Ours, not lmms-eval's: cue words followed by a capital letter ("The answer is B", "Option: (C)").
_CUE_LETTER = re.compile(r"(?i:answer|option|choice)\s*(?:(?i:is)\s*)?[:\-]?\s*\(?([A-Z])\b\)?")
# A letter at the start followed by a separator: "(B) text", "B) text", "B: text", "B. text".
_LEADING_LETTER = re.compile(r"^\s*(?:\(([A-Za-z])\)|([A-Z])\s*[.:)])")


def _text_key(text: str) -> str:
    return " ".join(text.lower().split()).strip(string.punctuation + " ")


def ai2d_lenient_letter(reply: str | None, options: list[str]) -> str | None:
    """Our lenient reading of an AI2D reply; returns a valid option letter or None (no guess).

    In order: whatever lmms-eval's exact mode reduces to a single letter ("A", "A.", "(A)", "**a**")
    -- so lenient is never below exact; a leading letter with a separator ("(B) text", "B: text");
    a cue ("The answer is C", "Answer: (C)") -- the last one wins; the option text itself, either the
    whole reply or exactly one option mentioned as a whole phrase.
    """
    if reply is None or not reply.strip():
        return None
    letters = option_letters(len(options))

    exact = ai2d_exact_normalise(reply)
    if len(exact) == 1 and exact.upper() in letters:
        return exact.upper()

    leading = _LEADING_LETTER.match(reply)
    if leading:
        letter = (leading.group(1) or leading.group(2)).upper()
        if letter in letters:
            return letter

    cued = [letter for letter in _CUE_LETTER.findall(reply) if letter in letters]
    if cued:
        return cued[-1]

    reply_key = _text_key(reply)
    option_keys = [_text_key(option) for option in options]
    if reply_key in option_keys:
        return letters[option_keys.index(reply_key)]
    mentioned = {
        letters[i]
        for i, key in enumerate(option_keys)
        if key and re.search(rf"(?<![a-z0-9]){re.escape(key)}(?![a-z0-9])", reply_key)
    }
    return mentioned.pop() if len(mentioned) == 1 else None
