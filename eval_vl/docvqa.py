"""DocVQA (validation): free-text answers scored by ANLS.

lmms-eval: `lmms_eval/tasks/docvqa/_default_template_docvqa_yaml` (pre_prompt "", post_prompt
"\\nAnswer the question using a single word or phrase.", max_new_tokens 32, greedy),
`docvqa_val.yaml` (split validation, metric anls), `utils.py` (`f"{pre}{question}{post}"`).
Schema (`lmms-lab/DocVQA`, config DocVQA): questionId str, question str, question_types list[str],
image Image, docId int64, ucsf_document_id str, ucsf_document_page_no str, answers list[str],
data_split str.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .metrics import anls
from zaya_vl.prompts import docvqa_prompt

from .task import Task, require, with_images


@dataclass(frozen=True)
class DocVQATask(Task):
    metric: ClassVar[str] = "anls"
    required_fields: ClassVar[tuple[str, ...]] = ("question", "answers")

    def prompt_text(self, item: dict) -> str:
        return docvqa_prompt(item['question'])

    def build_prompt(self, item: dict) -> str:
        return with_images(self.prompt_text(item), 1)

    def score(self, item: dict, prediction: str | None) -> float:
        answers = require(item, "answers", self.label(item))
        return anls(prediction, list(answers))

    def breakdown_keys(self, item: dict) -> dict[str, str | list[str]]:
        types = item.get("question_types") or []
        return {"question_types": list(types)} if types else {}


DOCVQA = DocVQATask(
    name="docvqa",
    hub_path="lmms-lab/DocVQA",
    hub_config="DocVQA",
    split="validation",
    max_new_tokens=32,
    id_field="questionId",
)
