"""MathVista (testmini): math over images, accuracy with deterministic answer extraction.

Prompt styles (`prompt_style`):
- "query" (our default, as MathVista's own evaluation asks): the dataset's own `query` column -- the official
  MathVista prompt ("Hint: ... at the end.\\nQuestion: ...\\nChoices:\\n(A) ...").
- "format-prompt": lmms-eval's `mathvista_testmini_format` task (shot 0, no caption/OCR):
  `mathvista_evals.py` `create_one_query` joins [question (+ " (Unit: u)"), "A. c1\\nB. c2...",
  hint] with "\\n", skipping empty parts, then strips. Hints: multi_choice "Answer with the
  option's letter from the given choices directly."; integer "Answer the question using a single
  integer number."; float precision 1 / 2 "... a single floating-point number with one / two
  decimal place(s)."; list "Answer the question using a Python list."
lmms-eval runs these with max_new_tokens 16384; we cap at 2048 by default (`--max-new-tokens`).
Schema (`AI4Math/MathVista`): pid str, question str, image str (path), decoded_image Image,
choices list[str] | None, unit str | None, precision float64 | None, answer str, question_type
("multi_choice" | "free_form"), answer_type ("text" | "integer" | "float" | "list"), metadata
{category, context, grade, img_height, img_width, language, skills list[str], source, split, task},
query str.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from PIL import Image

from zaya_vl.prompts import option_lines

from .mathvista_answer import decimals_of, mathvista_is_correct
from .task import ItemError, Task, decode_image, is_missing, require, with_images

_NUMBER_WORDS = {1: "one", 2: "two"}
# lmms-eval aggregates accuracy by these (mathvista_aggregate_results target_keys).
BREAKDOWN_METADATA = ("language", "source", "category", "task", "context", "grade", "skills")


def format_prompt_hint(question_type: str, answer_type: str, places: int) -> str:
    if question_type == "multi_choice":
        return "Answer with the option's letter from the given choices directly."
    if answer_type == "integer":
        return "Answer the question using a single integer number."
    if answer_type == "float":
        # lmms-eval only defines precision 1 and 2 (anything else leaves hint_text unset and raises);
        # we spell other precisions the same way.
        word = _NUMBER_WORDS.get(places, str(places))
        plural = "" if places == 1 else "s"
        return f"Answer the question using a single floating-point number with {word} decimal place{plural}."
    if answer_type == "list":
        return "Answer the question using a Python list."
    return ""


def decimal_places(item: dict) -> int:
    """Decimals a float answer is compared at: int(precision) -- the dataset stores 1.0, 2.0 --
    or, for a float item without precision, the gold answer's own decimals."""
    precision = item.get("precision")
    return decimals_of(str(item.get("answer", ""))) if is_missing(precision) else int(precision)


@dataclass(frozen=True)
class MathVistaTask(Task):
    prompt_style: str = "query"  # "query" | "format-prompt"

    metric: ClassVar[str] = "accuracy"
    required_fields: ClassVar[tuple[str, ...]] = ("question_type", "answer_type", "answer")

    def __post_init__(self) -> None:
        if self.prompt_style not in ("query", "format-prompt"):
            raise ValueError(f"prompt_style must be 'query' or 'format-prompt', got {self.prompt_style!r}")

    def check(self, item: dict, item_id: str) -> None:
        super().check(item, item_id)
        if item["question_type"] == "multi_choice":
            require(item, "choices", item_id)
        if self.prompt_style == "query":
            require(item, "query", item_id)
        else:
            require(item, "question", item_id)

    def images(self, item: dict, base_dir: Path | None = None, item_id: str = "?") -> list[Image.Image]:
        # The hub data decodes `decoded_image`; the official json keeps only the `image` path.
        value = item.get("decoded_image")
        if is_missing(value):
            value = item.get("image")
            if is_missing(value):
                raise ItemError(f"item {item_id}: missing field 'decoded_image'")
            return [decode_image(value, base_dir, item_id, "image")]
        return [decode_image(value, base_dir, item_id, "decoded_image")]

    def prompt_text(self, item: dict) -> str:
        if self.prompt_style == "query":
            return item["query"]
        question = item["question"]
        if item.get("unit"):
            question += f" (Unit: {item['unit']})"
        choices = item.get("choices") or []
        choices_text = option_lines(choices)
        hint = format_prompt_hint(item["question_type"], item["answer_type"], decimal_places(item))
        return "\n".join(part for part in (question, choices_text, hint) if part != "").strip()

    def build_prompt(self, item: dict) -> str:
        return with_images(self.prompt_text(item), 1)

    def score(self, item: dict, prediction: str | None) -> float:
        item_id = self.label(item)
        correct = mathvista_is_correct(
            prediction,
            question_type=require(item, "question_type", item_id),
            answer_type=require(item, "answer_type", item_id),
            answer=str(require(item, "answer", item_id)),
            choices=item.get("choices"),
            places=decimal_places(item),
        )
        return 1.0 if correct else 0.0

    def breakdown_keys(self, item: dict) -> dict[str, str | list[str]]:
        keys: dict[str, str | list[str]] = {
            "question_type": item.get("question_type"),
            "answer_type": item.get("answer_type"),
        }
        metadata = item.get("metadata") or {}
        for key in BREAKDOWN_METADATA:
            value = metadata.get(key)
            if not is_missing(value):
                keys[key] = list(value) if key == "skills" else value
        return {key: value for key, value in keys.items() if value not in (None, [])}


MATHVISTA = MathVistaTask(
    name="mathvista",
    hub_path="AI4Math/MathVista",
    hub_config=None,
    split="testmini",
    max_new_tokens=2048,
    image_field="decoded_image",
    id_field="pid",
    prompt_style="query",
)
MATHVISTA_FORMAT = dataclasses.replace(MATHVISTA, name="mathvista_format", prompt_style="format-prompt")
