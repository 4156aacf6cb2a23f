"""The bundled model's training mix (examples/tiny_docvqa/build.py): the rows it adds beside the eval-style
questions say what the page says."""

from __future__ import annotations

import random
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from zaya_vl.data.documents import make_document

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "tiny_docvqa"))
import build  # noqa: E402


@pytest.mark.parametrize("index", range(12))
def test_chart_steps_answer_from_the_chart(index):
    chart = make_document(build.SEED, "train", index, "chart", "easy").content
    steps = {name: (prompt, answer) for name, prompt, answer in build.chart_steps(asdict(chart), random.Random(index))}
    assert set(steps) == {"extreme", "lookup"}
    prompt, answer = steps["extreme"]
    extreme = prompt.removeprefix("What is the ").removesuffix(" value?")
    assert int(answer) == {"highest": max, "lowest": min}[extreme](chart.values)
    prompt, answer = steps["lookup"]
    value = int(prompt.removeprefix("Which bar has the value ").removesuffix("?"))
    assert chart.values[chart.labels.index(answer)] == value


def test_transcripts_list_every_printed_value():
    for kind in ("receipt", "form", "chart"):
        doc = make_document(build.SEED, "train", 0, kind, "easy")
        text = build.transcript(kind, asdict(doc.content))
        for qa in doc.questions:
            assert qa.answers[0] in text, (kind, qa)
    assert build.transcript("diagram", asdict(make_document(build.SEED, "train", 0, "diagram", "easy").content)) is None
