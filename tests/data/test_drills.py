"""The reading drills (examples/tiny_docvqa/drills.py) put ink in exactly the grid cells their docstring names,
the answer is six digits drawn there, and the rows' cells name exactly those glyphs."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DRILLS_PY = Path(__file__).parents[2] / "examples" / "tiny_docvqa" / "drills.py"
spec = importlib.util.spec_from_file_location("drills", DRILLS_PY)
drills = importlib.util.module_from_spec(spec)
spec.loader.exec_module(drills)

EXPECTED_CELLS = {
    "random6": {(4, col) for col in range(1, 7)},
    "repeat6": {(4, col) for col in range(1, 7)},
    "row12": {(4, col) for col in range(12)},
    "page": {(row, col) for row in range(12) for col in range(12)},
}


def inked_cells(path: Path) -> set[tuple[int, int]]:
    dark = np.asarray(Image.open(path).convert("L")) < 128
    return {(row, col) for row in range(12) for col in range(12)
            if dark[row * 28:(row + 1) * 28, col * 28:(col + 1) * 28].any()}


@pytest.mark.parametrize("drill", drills.DRILLS)
def test_drill_pages_and_answers(drill, tmp_path):
    drills.build(drill, tmp_path, count=3, seed=0)
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        user, assistant = row["messages"]
        answer = assistant["content"][0]["text"]
        assert len(answer) == 6 and answer.isdigit()
        if drill != "random6":
            assert len(set(answer)) == 1
        assert inked_cells(tmp_path / user["content"][0]["image"]) == EXPECTED_CELLS[drill]
        cells = user["content"][0]["cells"]  # the cell loss's targets: the digit drawn in each inked cell
        assert {(row, col) for row, line in enumerate(cells) for col, ch in enumerate(line) if ch != " "} \
            == EXPECTED_CELLS[drill]
        assert cells[4][1:7] == answer
