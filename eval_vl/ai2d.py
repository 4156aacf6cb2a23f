"""AI2D (test): diagram multiple choice, scored by the option letter.

lmms-eval: `lmms_eval/tasks/ai2d/ai2d.yaml` (default kwargs: prompt_format mcq, pre_prompt "",
post_prompt "\\nAnswer with the option's letter from the given choices directly.", max_new_tokens 16,
greedy; filter MultiChoiceRegexFilter; metric exact_match, ignore_case, ignore_punctuation),
`ai2d_no_mask.yaml` (same, dataset Efficient-Large-Model/ai2d-no-mask), `utils.py`
(`f"{pre}{question}\\n{A. opt\\nB. opt...}{post}"`; target = letter of `options[int(answer)]`).
Schema (`lmms-lab/ai2d`): question str, options list[str], answer str (0-based index), image Image.
There is no id column, so an item's id is its row index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from zaya_vl.prompts import ai2d_prompt, option_letters

from .metrics import ai2d_exact_match, ai2d_lenient_letter
from .task import ItemError, Task, require, with_images


@dataclass(frozen=True)
class AI2DTask(Task):
    metric: ClassVar[str] = "exact_match"
    required_fields: ClassVar[tuple[str, ...]] = ("question", "options", "answer")

    def check(self, item: dict, item_id: str) -> None:
        super().check(item, item_id)
        self.gold_letter(item, item_id)

    def gold_letter(self, item: dict, item_id: str = "?") -> str:
        options = require(item, "options", item_id)
        answer = require(item, "answer", item_id)
        try:
            index = int(answer)
        except (TypeError, ValueError):
            raise ItemError(f"item {item_id}: field 'answer' is not an option index: {answer!r}") from None
        if not 0 <= index < len(options):
            raise ItemError(f"item {item_id}: answer index {index} outside {len(options)} options")
        return option_letters(len(options))[index]

    def prompt_text(self, item: dict) -> str:
        return ai2d_prompt(item["question"], item["options"])

    def build_prompt(self, item: dict) -> str:
        return with_images(self.prompt_text(item), 1)

    def score(self, item: dict, prediction: str | None) -> float:
        return ai2d_exact_match(prediction, self.gold_letter(item))

    def extra_scores(self, item: dict, prediction: str | None) -> dict[str, float]:
        letter = ai2d_lenient_letter(prediction, list(item["options"]))
        return {"lenient": 1.0 if letter == self.gold_letter(item) else 0.0}


AI2D = AI2DTask(name="ai2d", hub_path="lmms-lab/ai2d", hub_config=None, split="test", max_new_tokens=16)
AI2D_NO_MASK = AI2DTask(
    name="ai2d_no_mask", hub_path="Efficient-Large-Model/ai2d-no-mask", hub_config=None, split="test", max_new_tokens=16
)
