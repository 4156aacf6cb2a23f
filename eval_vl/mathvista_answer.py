"""MathVista: deterministic, offline answer extraction and comparison (no LLM judge).

lmms-eval (`lmms_eval/tasks/mathvista/{utils.py,mathvista_evals.py}`) and the official MathVista
code (`evaluation/{extract_answer,calculate_score}.py`) extract with an LLM judge unless the reply
already is the bare answer, then normalise and compare strings. Ours replaces the judge with rules:

1. Where the answer is: the last `\\boxed{...}`, then the text after each "answer/option/choice"
   cue that is followed by "is" or a colon ("The answer is ...", "Final answer: ...", "The correct
   option is ..."), last cue first, each up to its line end; else the whole reply.
2. multi_choice: the reply equal to an option text; a letter ("B", "(B)", "B.", "B) 8/11") within
   the option range; the "(X)" letter if the reply names only one; an option text mentioned as a
   whole phrase if exactly one option is mentioned. Nothing found -> wrong (no nearest-option guess).
3. integer / float: the first number of the cued answer, else the last number of the reply; thousands
   separators, a leading sign, percent/unit/currency around it, `a/b` and `\\frac{a}{b}` are read.
   integer: correct iff the value is that integer. float: correct iff both round to
   `int(precision)` decimals equally (Python's round on the float, as MathVista's own scorer: an
   exact half like 1.15 is 1.149999... in binary and rounds down).
4. list: the last `[...]` (else the numbers of the cued answer); same length, equal elementwise.

Where this differs from lmms-eval's normalisation (which we call bugs and do not copy):
- float: lmms-eval calls `round(value, precision)` with the dataset's float64 precision (1.0), which
  raises TypeError; the except turns the prediction into None, so every float item scores 0.
  We round to `int(precision)` places, as the official MathVista code does with its int precision.
- integer: lmms-eval's `str(int(float(x)))` truncates, so "2.7" counts as 2; we require an integer.
- multi_choice: lmms-eval falls back to the option with the smallest edit distance, so an empty or
  unrelated reply still "chooses" an option (empty -> the shortest option); we score it 0.
"""

from __future__ import annotations

import ast
import bisect
import math
import re
import string

from zaya_vl.prompts import option_letters

# A runaway generation can be megabytes long; reading all of it would cost time (and, done naively, memory)
# for nothing: the answer is given at the end, an option letter at the start. Longer replies are read as
# their first REPLY_HEAD and last REPLY_TAIL characters. Every step below is linear in what it reads.
REPLY_HEAD = 1_024
REPLY_TAIL = 15_360
MAX_CUES = 8  # answer cues examined, counted from the last

# A cue needs "is" or a colon after it, so "To answer this, ..." is not mistaken for the answer.
_CUE = re.compile(r"(?i)\b(?:answer|option|choice)\b\s*(?:is\b\s*[:：]?|[:：])")
_OPTION_WORD = re.compile(r"(?i)^\s*(?:the\s+)?(?:option|choice)\s*")
# Not glued to a preceding ASCII letter/digit ("x2", "v1.2"), so "14cm", "$1.45", "45%" and "是13" read.
_NUMBER = re.compile(
    r"(?<![A-Za-z0-9_.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?!\d)"
    r"|(?<![A-Za-z0-9_.])[-+]?\.\d+"
)
_FRACTION = re.compile(r"\\d?frac\{\s*([-+]?[\d.]+)\s*\}\{\s*([-+]?[\d.]+)\s*\}|([-+]?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)")
_PAREN_LETTER = re.compile(r"\(([A-Za-z])\)")
_LETTER_ONLY = re.compile(r"^\s*(?:\(([A-Za-z])\)|([A-Z])(?:\s*[.:)]|\s*$))")


def _clean(text: str) -> str:
    # Unicode minus and thin spaces show up in model output and would hide numbers.
    return text.replace("\u2212", "-").replace("\u2009", " ").replace("\u00a0", " ")


def bounded(reply: str) -> str:
    """The part of a reply that is examined: all of it up to REPLY_HEAD + REPLY_TAIL characters, else its head
    and its tail on separate lines (so no number or phrase is glued together across the cut)."""
    if len(reply) <= REPLY_HEAD + REPLY_TAIL:
        return reply
    return reply[:REPLY_HEAD] + "\n" + reply[-REPLY_TAIL:]


def _boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{") - 1
    for position in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if depth == 0:
            return text[begin + 1 : position]
    return text[begin + 1 :]


def answer_segments(reply: str) -> list[str]:
    """Where the final answer is said, most specific first: boxed content, cued answers (last cue
    first, each up to the end of its line)."""
    segments = []
    boxed = _boxed(reply)
    if boxed is not None and boxed.strip():
        segments.append(boxed)
    cues = list(_CUE.finditer(reply))[-MAX_CUES:]
    for cue in reversed(cues):
        line_end = reply.find("\n", cue.end())
        rest = reply[cue.end() : len(reply) if line_end < 0 else line_end].strip()
        if rest:
            segments.append(rest)
    return segments


def _to_float(token: str) -> float:
    return float(token.replace(",", ""))


def numbers_in(text: str) -> list[float]:
    """Numbers in reading order; a fraction counts as one number."""
    text = _clean(text)
    found: list[tuple[int, float]] = []
    taken: list[tuple[int, int]] = []
    for match in _FRACTION.finditer(text):
        numerator, denominator = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
        if _to_float(denominator) != 0:
            found.append((match.start(), _to_float(numerator) / _to_float(denominator)))
            taken.append(match.span())
    # Fractions come in text order and do not overlap, so "inside a fraction" is one bisect, not a scan.
    starts = [start for start, _ in taken]
    for match in _NUMBER.finditer(text):
        index = bisect.bisect_right(starts, match.start()) - 1
        if index < 0 or match.start() >= taken[index][1]:
            found.append((match.start(), _to_float(match.group())))
    return [value for _, value in sorted(found)]


def extract_number(reply: str) -> float | None:
    reply = bounded(reply)
    for segment in answer_segments(reply):
        values = numbers_in(segment)
        if values:
            return values[0]
    values = numbers_in(reply)
    return values[-1] if values else None


def _text_key(text: str) -> str:
    return " ".join(text.lower().split()).strip(string.punctuation + " ")


def _mentioned_choice(text: str, choices: list[str]) -> str | None:
    """The single option whose text appears as a whole phrase, ignoring options that only appear
    inside a longer mentioned option ("quarter" inside "quarter past")."""
    key = _text_key(text)
    spans: dict[int, list[tuple[int, int]]] = {}
    for index, choice in enumerate(choices):
        choice_key = _text_key(choice)
        if not choice_key:
            continue
        pattern = rf"(?<![a-z0-9])(?<![0-9][.,]){re.escape(choice_key)}(?![a-z0-9])(?![.,][0-9])"
        found = [m.span() for m in re.finditer(pattern, key)]
        if found:
            spans[index] = found

    def covered(index: int) -> bool:
        # Is every span of this option inside a longer span of another one? Sorted by start with a running
        # maximum of ends, "some other span starts at or before s and ends at or after e" is one bisect.
        others = sorted(span for other, found in spans.items() if other != index for span in found)
        starts = [s2 for s2, _ in others]
        reach, furthest = [], -1
        for _, e2 in others:
            furthest = max(furthest, e2)
            reach.append(furthest)
        same_start_end: dict[int, int] = {}
        for s2, e2 in others:
            same_start_end[s2] = max(same_start_end.get(s2, -1), e2)

        def inside_longer(s: int, e: int) -> bool:
            before = bisect.bisect_left(starts, s) - 1  # spans starting strictly before s: longer if they reach e
            return (before >= 0 and reach[before] >= e) or same_start_end.get(s, -1) > e

        return all(inside_longer(s, e) for s, e in spans[index])
    candidates = [index for index in spans if not covered(index)]
    return choices[candidates[0]] if len(candidates) == 1 else None


def _choice_from(text: str, choices: list[str]) -> str | None:
    letters = option_letters(len(choices))
    keys = [_text_key(choice) for choice in choices]
    if _text_key(text) in keys:
        return choices[keys.index(_text_key(text))]
    leading = _LETTER_ONLY.match(text)
    if leading:
        letter = (leading.group(1) or leading.group(2)).upper()
        if letter in letters:
            return choices[letters.index(letter)]
    return None


def extract_choice(reply: str, choices: list[str]) -> str | None:
    """The option text the reply picks, or None."""
    reply = _clean(bounded(reply)).strip()
    if not reply:
        return None
    for text in [*answer_segments(reply), reply]:
        picked = _choice_from(_OPTION_WORD.sub("", text), choices)
        if picked is not None:
            return picked
    letters = option_letters(len(choices))
    # lmms-eval's normalisation reads "(X)"; we accept it only when the reply names one letter.
    parenthesised = {letter.upper() for letter in _PAREN_LETTER.findall(reply)} & set(letters)
    if len(parenthesised) == 1:
        return choices[letters.index(parenthesised.pop())]
    for text in [*answer_segments(reply), reply]:
        picked = _mentioned_choice(text, choices)
        if picked is not None:
            return picked
    return None


def _parse_list(text: str) -> list | None:
    try:
        value = ast.literal_eval(text)
        if isinstance(value, (list, tuple)):
            return list(value)
    except (ValueError, SyntaxError):
        pass
    inner = text.strip().lstrip("[(").rstrip("])")
    return [part.strip().strip("'\"") for part in inner.split(",") if part.strip()]


def extract_list(reply: str) -> list | None:
    reply = _clean(bounded(reply))
    brackets = re.findall(r"\[[^\[\]]*\]", reply)
    if brackets:
        return _parse_list(brackets[-1])
    for segment in answer_segments(reply):
        values = numbers_in(segment)
        if values:
            return values
    return None


def _same_element(predicted, gold) -> bool:
    try:
        return math.isclose(float(predicted), float(gold), rel_tol=0, abs_tol=1e-9)
    except (TypeError, ValueError):
        return _text_key(str(predicted)) == _text_key(str(gold))


def decimals_of(answer: str) -> int:
    return len(answer.split(".", 1)[1]) if "." in answer else 0


def mathvista_is_correct(
    reply: str | None,
    *,
    question_type: str,
    answer_type: str,
    answer: str,
    choices: list[str] | None,
    places: int,
) -> bool:
    """Is the reply right? `places`: decimals a float answer is compared at (int(precision))."""
    reply = "" if reply is None else reply.strip()  # lmms-eval strips the reply first too
    if not reply:
        return False
    if question_type == "multi_choice":
        picked = extract_choice(reply, list(choices or []))
        return picked is not None and _text_key(picked) == _text_key(answer)
    if answer_type == "integer":
        value = extract_number(reply)
        return value is not None and value == round(value) and int(round(value)) == int(_to_float(answer))
    if answer_type == "float":
        value = extract_number(reply)
        return value is not None and round(value, places) == round(_to_float(answer), places)
    if answer_type == "list":
        predicted, gold = extract_list(reply), _parse_list(answer)
        return (
            predicted is not None
            and gold is not None
            and len(predicted) == len(gold)
            and all(_same_element(p, g) for p, g in zip(predicted, gold))
        )
    # Any other answer type: compare the cued text (or the reply) to the answer, case-insensitively.
    reply = bounded(reply)
    return any(_text_key(text) == _text_key(answer) for text in [*answer_segments(reply), reply])
