"""Row formats written by the generator: chat rows for training, DocVQA / AI2D rows for eval.

Training prompts are the eval tasks' own (`zaya_vl.prompts`: lmms-eval's DocVQA suffix, and AI2D's question +
`A. option` lines + suffix) so a tiny model is trained on the prompts it is tested on.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Iterable

from PIL import Image

from zaya_vl.prompts import ai2d_prompt, docvqa_prompt, option_letters

CHAT_KEYS = ("id", "doc_id", "kind", "tier", "messages")
DOCVQA_KEYS = ("questionId", "question", "question_types", "image", "docId",
               "ucsf_document_id", "ucsf_document_page_no", "answers", "data_split")
AI2D_KEYS = ("id", "question", "options", "answer", "image")


@dataclass(frozen=True)
class QA:
    """One question about a document.

    `answers[0]` is the training target and the rest are accepted variants (DocVQA ANLS takes the best).
    Multiple-choice questions carry `options` and `answer_index`; their target is the option letter.
    `box` names the rendered region where the answer is printed, if it is printed.
    """

    qtype: str
    question: str
    answers: tuple[str, ...]
    options: tuple[str, ...] = ()
    answer_index: int | None = None
    box: str | None = None

    @property
    def is_multiple_choice(self) -> bool:
        return bool(self.options)

    @property
    def prompt(self) -> str:
        if self.is_multiple_choice:
            return ai2d_prompt(self.question, self.options)
        return docvqa_prompt(self.question)

    @property
    def target(self) -> str:
        return option_letters(len(self.options))[self.answer_index] if self.is_multiple_choice else self.answers[0]


def chat_row(row_id: str, doc_id: str, kind: str, tier: str, image: str, qa: QA,
             cells: list[str] | None = None) -> dict:
    """One trainer row asking `qa` as the eval asks it."""
    return page_chat_row(row_id, doc_id, kind, tier, image, qa.prompt, qa.target, cells)


def page_chat_row(row_id: str, doc_id: str, kind: str, tier: str, image: str, prompt: str, target: str,
                  cells: list[str] | None = None) -> dict:
    """One trainer row: a page, a prompt, the reply. ``cells``, when the page has them, go on the image part: the
    glyph in each merged image token's cell, one string per row, which the trainer's cell loss reads (see
    training/README)."""
    image_part = {"type": "image", "image": image}
    if cells is not None:
        image_part["cells"] = cells
    user = [image_part, {"type": "text", "text": prompt}]
    assistant = [{"type": "text", "text": target}]
    return {"id": row_id, "doc_id": doc_id, "kind": kind, "tier": tier,
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def docvqa_row(row_id: str, doc_id: str, doc_number: int, kind: str, tier: str, image: str, qa: QA) -> dict:
    return {"questionId": row_id, "question": qa.question, "question_types": [kind, qa.qtype, tier],
            "image": image, "docId": doc_number, "ucsf_document_id": doc_id,
            "ucsf_document_page_no": "1", "answers": list(qa.answers), "data_split": "test"}


def ai2d_row(row_id: str, image: str, qa: QA) -> dict:
    # lmms-eval's ai2d doc_to_target reads options[int(doc["answer"])]: a 0-based index as a string.
    return {"id": row_id, "question": qa.question, "options": list(qa.options),
            "answer": str(qa.answer_index), "image": image}


def _check(ok: bool, row: dict, why: str) -> None:
    if not ok:
        raise ValueError(f"{why}: {json.dumps(row)[:300]}")


def validate_chat_row(row: dict) -> None:
    _check(tuple(row) == CHAT_KEYS, row, f"chat row keys must be {CHAT_KEYS}")
    _check(all(isinstance(row[k], str) for k in CHAT_KEYS[:4]), row, "id/doc_id/kind/tier must be str")
    user, assistant = row["messages"]
    _check(user["role"] == "user" and assistant["role"] == "assistant", row, "roles must be user, assistant")
    kinds = [part["type"] for part in user["content"]]
    _check(kinds == ["image", "text"], row, "user content must be [image, text]")
    _check(all(isinstance(part[part["type"]], str) for part in user["content"]), row, "parts must be str")
    cells = user["content"][0].get("cells")
    _check(cells is None or isinstance(cells, list) and all(isinstance(line, str) for line in cells), row,
           "the image's cells must be a list of str")
    _check([p["type"] for p in assistant["content"]] == ["text"], row, "assistant content must be [text]")
    _check(bool(assistant["content"][0]["text"]), row, "empty answer")


def validate_docvqa_row(row: dict) -> None:
    _check(tuple(row) == DOCVQA_KEYS, row, f"DocVQA row keys must be {DOCVQA_KEYS}")
    for key in ("questionId", "question", "image", "ucsf_document_id", "ucsf_document_page_no", "data_split"):
        _check(isinstance(row[key], str), row, f"{key} must be str")
    _check(isinstance(row["docId"], int) and not isinstance(row["docId"], bool), row, "docId must be int")
    for key in ("question_types", "answers"):
        _check(isinstance(row[key], list) and row[key] and all(isinstance(v, str) for v in row[key]),
               row, f"{key} must be a non-empty list of str")


def validate_ai2d_row(row: dict) -> None:
    _check(tuple(row) == AI2D_KEYS, row, f"AI2D row keys must be {AI2D_KEYS}")
    _check(all(isinstance(row[k], str) for k in ("id", "question", "answer", "image")), row, "must be str")
    options = row["options"]
    _check(isinstance(options, list) and len(options) == 4 and all(isinstance(o, str) for o in options),
           row, "options must be 4 str")
    _check(row["answer"] in {"0", "1", "2", "3"}, row, "answer must be the 0-based option index as str")


def jsonl_bytes(rows: Iterable[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def png_bytes(image: Image.Image) -> bytes:
    # Pillow writes no timestamp chunk, so the same pixels give the same bytes.
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
