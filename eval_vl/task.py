"""What every evaluation task shares: identity, image decoding, field checks.

A task is a frozen dataclass; `docvqa.py`, `ai2d.py` and `mathvista.py` subclass it and own their
prompt building and scoring. Items are rows as `datasets` returns them (plain dicts).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from zaya_vl.tokenization import IMAGE_PLACEHOLDER
from zaya_vl.vision import ImageLoadError, load_image


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
    """Turn one image cell into an RGB PIL image with the loader `ask` and training use (`vision.load_image`:
    transparency onto white, 16-bit depth scaled, EXIF rotation applied, full decode so a corrupt file fails
    here), and check the vision tower's processor will take its shape.

    Accepts what the sources give: a PIL image (datasets with decoding on), a {"bytes", "path"} dict
    (datasets `Image(decode=False)`, or parquet written without HF metadata), raw bytes, a data: URI, or a
    path string (local JSONL; relative paths are relative to the data file's folder).
    """
    if isinstance(value, dict) and not value.get("bytes") and value.get("path"):
        value = {"bytes": None, "path": str(_resolve(value["path"], base_dir))}
    elif isinstance(value, str) and value and not _URI.match(value):
        value = str(_resolve(value, base_dir))
    elif is_missing(value) or (isinstance(value, (str, dict, bytes, bytearray)) and not value):
        raise ItemError(f"item {item_id}: missing field {field!r}")
    try:
        image = load_image(value)
    except (ImageLoadError, TypeError) as error:
        # Drop object addresses ("<BytesIO object at 0x7f..>") so a rerun records the same message.
        detail = re.sub(r" at 0x[0-9a-fA-F]+", "", str(error))
        raise ItemError(f"item {item_id}: cannot decode image in {field!r}: {detail}") from error
    check_image_shape(image, item_id, field)
    return image


def check_image_shape(image: Image.Image, item_id: str, field: str) -> None:
    """ItemError for an image the Qwen2-VL resize refuses (an aspect ratio over 200): found here it is that
    item's error record; found inside the predictor it would end the run, and every rerun, at the same item."""
    width, height = image.size
    try:
        smart_resize(height, width)
    except ValueError as error:
        raise ItemError(f"item {item_id}: image in {field!r} is {width}x{height} pixels, which the vision "
                        f"processor refuses: {error}") from None


_URI = re.compile(r"^(?:data:|file://)", re.IGNORECASE)


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
