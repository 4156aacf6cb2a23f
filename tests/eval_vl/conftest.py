"""Tiny local datasets in the real hub schemas, images drawn with PIL; honest table predictors.

Schemas from the dataset cards: lmms-lab/DocVQA (config DocVQA), lmms-lab/ai2d, AI4Math/MathVista.
Each fixture dataset has one item with a corrupt or missing image and one with a missing field.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageDraw


def png_bytes(text: str, size=(64, 48), color=(255, 255, 255)) -> bytes:
    image = Image.new("RGB", size, color)
    ImageDraw.Draw(image).text((4, 4), text, fill=(0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


CORRUPT_IMAGE = {"bytes": b"this is not an image", "path": None}

# --- DocVQA: saved as parquet through `datasets` (Image feature kept in the parquet metadata) ----
DOCVQA_ROWS = [
    dict(questionId="101", question="What is the date?", question_types=["handwritten", "form"],
         answers=["March 5, 1998", "5 March 1998"]),
    dict(questionId="102", question="What is the total?", question_types=["table/list"], answers=["$1,234"]),
    dict(questionId="103", question="Who signed the letter?", question_types=["form"], answers=["John Smith"]),
    dict(questionId="104", question="What is the title?", question_types=["others"], answers=["Report"]),  # corrupt image
    dict(questionId="105", question="Which page?", question_types=["layout"], answers=None),  # missing answers
]
# ANLS by hand: 101 "march 5, 1998" == answer 1 after lower-casing -> 1.0;
# 102 "$1,243" vs "$1,234": 2 substitutions / 6 -> 1 - 1/3 = 0.6667; 103 "Jane Doe" -> 0.
DOCVQA_REPLIES = {"101": "march 5, 1998", "102": "$1,243", "103": "Jane Doe"}

# --- AI2D: JSONL with image paths relative to the file ------------------------------------------
AI2D_ROWS = [
    dict(question="Which part absorbs water?", options=["leaf", "root", "stem", "flower"], answer="1", image="images/0.png"),
    dict(question="What gives light?", options=["sun", "moon"], answer="0", image="images/1.png"),
    dict(question="How many legs?", options=["3", "4", "5"], answer="2", image="images/2.png"),
    dict(question="Which is a predator?", options=["owl", "mouse"], answer="0", image="images/missing.png"),
    dict(question="What is shown?", options=["a cell", "a leaf"], image="images/4.png"),  # no answer field
]
# Exact (lmms-eval): "B" -> 1; "The answer is A" -> 0; "5" -> 0.   Lenient: all three -> 1.
AI2D_REPLIES = {"0": "B", "1": "The answer is A", "2": "5"}

# --- MathVista: a `save_to_disk` dataset with the full feature set ------------------------------
def _meta(task: str, skills: list[str], context: str = "scientific figure") -> dict:
    return dict(category="math-targeted-vqa", context=context, grade="high school", img_height=48, img_width=64,
                language="english", skills=skills, source="synthetic", split="testmini", task=task)


MATHVISTA_ROWS = [
    dict(pid="1", question="How far is the spring compressed?", choices=None, unit=None, precision=1.0, answer="1.2",
         question_type="free_form", answer_type="float", metadata=_meta("textbook question answering", ["scientific reasoning"])),
    dict(pid="2", question="what is the total volume of the measuring cup?", choices=None, unit="g", precision=None,
         answer="1000", question_type="free_form", answer_type="integer",
         metadata=_meta("visual question answering", ["numeric commonsense", "arithmetic reasoning"], "natural image")),
    dict(pid="3", question="Find the angle BOC.", choices=["135°", "140°", "145°", "150°"], unit=None, precision=None,
         answer="145°", question_type="multi_choice", answer_type="text",
         metadata=_meta("geometry problem solving", ["geometry reasoning", "algebraic reasoning"], "geometry diagram")),
    dict(pid="4", question="Is the red bar the tallest?", choices=["Yes", "No"], unit=None, precision=None, answer="Yes",
         question_type="multi_choice", answer_type="text", metadata=_meta("figure question answering", ["statistical reasoning"], "bar chart")),
    dict(pid="5", question="Between which two years is the peak?", choices=None, unit=None, precision=None,
         answer="[2007, 2008]", question_type="free_form", answer_type="list",
         metadata=_meta("figure question answering", ["statistical reasoning"], "line plot")),
    dict(pid="6", question="How much money is needed? (Unit: $)", choices=None, unit=None, precision=2.0, answer="1.45",
         question_type="free_form", answer_type="float", metadata=_meta("math word problem", ["arithmetic reasoning"], "table")),
]
# By hand: 1 "1.24" rounds to 1.2 -> 1; 2 "1,000 g" -> 1; 3 "C" -> 145° -> 1; 4 "No" -> 0;
# 5 "[2007, 2009]" -> 0; 6 "1.4" vs 1.45 at 2 places -> 0.   Accuracy 3/6.
MATHVISTA_REPLIES = {"1": "The answer is 1.24", "2": "1,000 g", "3": "C", "4": "No", "5": "[2007, 2009]", "6": "1.4"}


def mathvista_query(row: dict) -> str:
    """The official MathVista `query` column, written the way the dataset writes it."""
    hints = {
        "text": "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.",
        "integer": "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.",
        "list": "Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.",
    }
    if row["answer_type"] == "float":
        hint = {1: "Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.",
                2: "Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end."}[int(row["precision"])]
    else:
        hint = hints[row["answer_type"]]
    question = f"Question: {row['question']}" + (f" (Unit: {row['unit']})" if row["unit"] else "")
    parts = [hint, question]
    if row["choices"]:
        parts.append("Choices:\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(row["choices"])))
    return "\n".join(parts)


@dataclass
class TinyData:
    docvqa: Path
    ai2d: Path
    mathvista: Path

    def overrides(self) -> dict[str, Path]:
        return {"docvqa": self.docvqa, "ai2d": self.ai2d, "mathvista": self.mathvista}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> TinyData:
    import datasets

    root = tmp_path_factory.mktemp("tiny_eval_data")
    strings = datasets.List(datasets.Value("string"))

    docvqa_features = datasets.Features({
        "questionId": datasets.Value("string"), "question": datasets.Value("string"), "question_types": strings,
        "image": datasets.Image(), "docId": datasets.Value("int64"), "ucsf_document_id": datasets.Value("string"),
        "ucsf_document_page_no": datasets.Value("string"), "answers": strings, "data_split": datasets.Value("string"),
    })
    docvqa_rows = [
        dict(row, image=CORRUPT_IMAGE if row["questionId"] == "104" else {"bytes": png_bytes(row["question"]), "path": None},
             docId=i, ucsf_document_id=f"doc{i}", ucsf_document_page_no="1", data_split="val")
        for i, row in enumerate(DOCVQA_ROWS)
    ]
    docvqa_path = root / "docvqa" / "validation.parquet"
    docvqa_path.parent.mkdir()
    datasets.Dataset.from_list(docvqa_rows, features=docvqa_features).to_parquet(str(docvqa_path))

    ai2d_dir = root / "ai2d"
    (ai2d_dir / "images").mkdir(parents=True)
    for index in (0, 1, 2, 4):
        (ai2d_dir / "images" / f"{index}.png").write_bytes(png_bytes(f"ai2d {index}", color=(200, 230, 255)))
    ai2d_path = ai2d_dir / "test.jsonl"
    ai2d_path.write_text("".join(json.dumps(row) + "\n" for row in AI2D_ROWS))

    mathvista_features = datasets.Features({
        "pid": datasets.Value("string"), "question": datasets.Value("string"), "image": datasets.Value("string"),
        "decoded_image": datasets.Image(), "choices": strings, "unit": datasets.Value("string"),
        "precision": datasets.Value("float64"), "answer": datasets.Value("string"),
        "question_type": datasets.Value("string"), "answer_type": datasets.Value("string"),
        "metadata": {
            "category": datasets.Value("string"), "context": datasets.Value("string"), "grade": datasets.Value("string"),
            "img_height": datasets.Value("int64"), "img_width": datasets.Value("int64"),
            "language": datasets.Value("string"), "skills": strings, "source": datasets.Value("string"),
            "split": datasets.Value("string"), "task": datasets.Value("string"),
        },
        "query": datasets.Value("string"),
    })
    mathvista_rows = [
        dict(row, image=f"images/{row['pid']}.jpg", decoded_image={"bytes": png_bytes(row["pid"]), "path": None},
             query=mathvista_query(row))
        for row in MATHVISTA_ROWS
    ]
    mathvista_dir = root / "mathvista"
    datasets.Dataset.from_list(mathvista_rows, features=mathvista_features).save_to_disk(str(mathvista_dir))
    return TinyData(docvqa=docvqa_path, ai2d=ai2d_path, mathvista=mathvista_dir)


class TablePredictor:
    """Replies from a table keyed by item id ("" for unknown ids); records every batch it sees."""

    def __init__(self, replies: dict[str, str], crash_after_batches: int | None = None):
        self.replies = replies
        self.crash_after_batches = crash_after_batches
        self.batches: list[list] = []

    def predict(self, requests):
        if self.crash_after_batches is not None and len(self.batches) >= self.crash_after_batches:
            raise RuntimeError("simulated crash")
        self.batches.append(list(requests))
        return [self.replies.get(request.item_id, "") for request in requests]

    @property
    def requested_ids(self) -> list[str]:
        return [request.item_id for batch in self.batches for request in batch]


@pytest.fixture
def table_predictor():
    return TablePredictor


@pytest.fixture
def all_replies() -> dict[str, dict[str, str]]:
    return {"docvqa": DOCVQA_REPLIES, "ai2d": AI2D_REPLIES, "mathvista": MATHVISTA_REPLIES}


class MultiTaskPredictor(TablePredictor):
    """Table predictor across tasks: replies[task][item_id]."""

    def __init__(self, replies: dict[str, dict[str, str]], crash_after_batches: int | None = None):
        super().__init__({}, crash_after_batches)
        self.by_task = replies

    def predict(self, requests):
        if self.crash_after_batches is not None and len(self.batches) >= self.crash_after_batches:
            raise RuntimeError("simulated crash")
        self.batches.append(list(requests))
        return [self.by_task[request.task].get(request.item_id, "") for request in requests]


@pytest.fixture
def multi_task_predictor():
    return MultiTaskPredictor
