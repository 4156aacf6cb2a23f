"""What every evaluation task shares: identity, image decoding, field checks.

A task is a frozen dataclass; `docvqa.py`, `ai2d.py` and `mathvista.py` subclass it and own their
prompt building and scoring. Items are rows as `datasets` returns them (plain dicts).
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from zaya_vl.tokenization import IMAGE_PLACEHOLDER


class ItemError(ValueError):
    """An item that cannot be evaluated (missing field, corrupt image). The runner records it and
    goes on; the message always names the item id and the problem."""


def is_missing(value: Any) -> bool:
    # Parquet/JSON give None for an absent value; pandas-built data can give NaN.
    return value is None or (isinstance(value, float) and math.isnan(value))


def require(item: dict, field: str, item_id: str, *, allow_empty: bool = False) -> Any:
    """item[field], or ItemError naming the field and the item."""
    if field not in item or is_missing(item[field]):
        raise ItemError(f"item {item_id}: missing field {field!r}")
    value = item[field]
    if not allow_empty and isinstance(value, (str, list, tuple)) and len(value) == 0:
        raise ItemError(f"item {item_id}: field {field!r} is empty")
    return value


def decode_image(value: Any, base_dir: Path | None, item_id: str, field: str) -> Image.Image:
    """Turn one image cell into an RGB PIL image.

    Accepts what the sources give: a PIL image (datasets with decoding on), a {"bytes", "path"}
    dict (datasets `Image(decode=False)`, or parquet written without HF metadata), raw bytes, or a
    path string (local JSONL; relative paths are relative to the data file's folder).
    """
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict) and value.get("bytes"):
            image = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            image = Image.open(_resolve(value["path"], base_dir))
        elif isinstance(value, (bytes, bytearray)):
            image = Image.open(io.BytesIO(value))
        elif isinstance(value, str) and value:
            image = Image.open(_resolve(value, base_dir))
        else:
            raise ItemError(f"item {item_id}: missing field {field!r}")
        # convert() forces the full decode, so a truncated or corrupt file fails here, per item.
        # lmms-eval's doc_to_visual also converts every image to RGB.
        return image.convert("RGB")
    except ItemError:
        raise
    except Exception as error:  # PIL raises several unrelated types for bad files
        # Drop object addresses ("<BytesIO object at 0x7f..>") so a rerun records the same message.
        detail = re.sub(r" at 0x[0-9a-fA-F]+", "", str(error))
        raise ItemError(f"item {item_id}: cannot decode image in {field!r}: {type(error).__name__}: {detail}") from error


def _resolve(path: str, base_dir: Path | None) -> Path:
    resolved = Path(path)
    if not resolved.is_absolute() and base_dir is not None:
        resolved = Path(base_dir) / resolved
    return resolved


@dataclass(frozen=True)
class Task:
    """One benchmark: where its data lives, how to prompt, how to score."""

    name: str
    hub_path: str  # `datasets.load_dataset` name
    hub_config: str | None
    split: str
    max_new_tokens: int
    image_field: str = "image"
    id_field: str | None = None  # None: the row index is the id (AI2D has no id column)

    metric: ClassVar[str] = "accuracy"
    # Fields the prompt and the score need; checked before the model sees the item.
    required_fields: ClassVar[tuple[str, ...]] = ()

    def item_id(self, item: dict, index: int | None = None) -> str:
        """The id column's value; the row index where the task has no id column (AI2D)."""
        if self.id_field is not None and not is_missing(item.get(self.id_field)):
            return str(item[self.id_field])
        if index is None:
            raise ValueError(f"{self.name}: item has no {self.id_field or 'id'} column value; pass its row index")
        return str(index)

    def label(self, item: dict) -> str:
        """The item's id for messages when its row index is not known."""
        value = item.get(self.id_field) if self.id_field else None
        return "?" if is_missing(value) else str(value)

    def images(self, item: dict, base_dir: Path | None = None, item_id: str = "?") -> list[Image.Image]:
        return [decode_image(item.get(self.image_field), base_dir, item_id, self.image_field)]

    def check(self, item: dict, item_id: str) -> None:
        """Raise ItemError if the item lacks what prompt or scoring need (the id is not needed:
        the runner falls back to the row index)."""
        for field in self.required_fields:
            require(item, field, item_id)

    def build_prompt(self, item: dict) -> str:
        raise NotImplementedError

    def score(self, item: dict, prediction: str | None) -> float:
        """Headline score in [0, 1], the lmms-eval-compatible one where there is one."""
        raise NotImplementedError

    def extra_scores(self, item: dict, prediction: str | None) -> dict[str, float]:
        """Scores reported beside the headline (e.g. AI2D's lenient letter matching)."""
        return {}

    def breakdown_keys(self, item: dict) -> dict[str, str | list[str]]:
        """Group labels for per-category scores; a list value counts the item in each group."""
        return {}


def with_images(prompt: str, n_images: int) -> str:
    """One placeholder per image, straight before the question: the layout lmms-eval's Qwen2.5-VL model sends
    (content parts [image, text], which the chat template joins with no separator), and the one `zaya-vl ask`,
    `VLAssistant` and the trainer's chat rows use. LLaVA-style "<image>\n" is a different prompt."""
    return IMAGE_PLACEHOLDER * n_images + prompt
