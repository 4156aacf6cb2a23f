"""Chat rows in the formats users bring → one conversation the chat template renders, with its images in order.

Accepted, per row (a JSONL line or a ``datasets`` row):

- **messages** (OpenAI / transformers style): ``{"role": "user", "content": ...}``; ``content`` is a string or a
  list of ``{"type": "text", "text": ...}`` / ``{"type": "image", "image": ...}`` parts (``image_url`` parts with a
  ``url`` too). An image part without a source takes the next entry of the row's ``images`` column.
- **LLaMA-Factory / ms-swift**: the same, with ``"content": "<image>What is the total?"`` and an ``images`` column.
- **sharegpt**: ``"conversations": [{"from": "human", "value": "<image>..."}, {"from": "gpt", "value": "..."}]``,
  roles ``human`` / ``gpt`` / ``system``, with an optional top-level ``system`` column and an ``images`` column.

``<image>`` in any text is an image: it is where the next image of the row's ``images`` column goes, exactly as
LLaMA-Factory, ms-swift and sharegpt data mean it, whatever the model's processor writes for an image (the chat
template renders each image part its own way). It is never trained as literal text (a tokenizer with an
``<image>`` token would read it as the image placeholder anyway). Placeholders and image parts without a
source take the column's images in order of appearance, and their number must equal the column's length: a
mismatch either way is an :class:`InvalidSample` (reason ``image_count``), so no image is ever dropped silently.

Everything else that cannot be rendered faithfully is an ``InvalidSample`` naming the message: a role other than
system / user / assistant (sharegpt: system / human / gpt), a null or missing ``content``, a part type other than
text / image (``video``, ``audio``), a non-string text, a ``videos`` / ``audios`` column with entries, and the
expanded-image tokens (``<image_soft_token>``, ``<start_of_image>``, ``<end_of_image>``) typed in text: only the
processor writes those (reason ``image_token``).

Every function here is a function of one row, so a ``DataLoader`` worker can run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
UNSUPPORTED_MEDIA_COLUMNS = ("videos", "audios", "video", "audio")


@dataclass
class Conversation:
    """``messages``: each ``{"role", "content": [parts]}`` with ``{"type": "text", "text"}`` and
    ``{"type": "image"}`` parts (``cells`` kept); ``images``: the source of each image part, in order."""

    messages: list[dict]
    images: list[Any]


def read_conversation(record: dict, *, column: str, images_column: str, system_column: str | None,
                      placeholder: str, reserved_tokens: tuple[str, ...],
                      invalid: Callable[[str, str], Exception]) -> Conversation:
    """The conversation of ``record[column]``. ``invalid(reason, detail)`` builds the error to raise."""
    raw = record.get(column)
    if not isinstance(raw, (list, tuple)) or not raw:
        raise invalid("malformed", f"{column!r} must be a non-empty list of messages, got {_short(raw)}")
    for media in UNSUPPORTED_MEDIA_COLUMNS:
        if media != images_column and record.get(media):
            raise invalid("unsupported", f"the row has a {media!r} column; only images are supported")
    column_images = record.get(images_column)
    if column_images is None:
        column_images = []
    elif not isinstance(column_images, (list, tuple)):
        column_images = [column_images]
    column_images = list(column_images)

    messages: list[dict] = []
    images: list[Any] = []
    taken = 0  # entries of the images column used so far

    def take(what: str) -> Any:
        nonlocal taken
        if taken >= len(column_images):
            raise invalid("image_count", f"{what} needs image {taken + 1} but the {images_column!r} column has "
                          f"{len(column_images)}; each {placeholder!r} in the text and each image part without a "
                          "source takes the next image of that column")
        taken += 1
        return column_images[taken - 1]

    def text_parts(text: Any, where: str) -> list[dict]:
        if not isinstance(text, str):
            raise invalid("malformed", f"{where}: text must be a string, got {_short(text)}")
        for token in reserved_tokens:
            if token in text:
                raise invalid("image_token", f"{where}: the text holds {token!r}, which only the processor writes "
                              f"when it expands an image; write {placeholder!r} where an image goes")
        parts = []
        pieces = text.split(placeholder)
        for k, piece in enumerate(pieces):
            if k > 0:
                images.append(take(f"{where}: {placeholder!r} number {k}"))
                parts.append({"type": "image"})
            if piece:
                parts.append({"type": "text", "text": piece})
        return parts

    system = record.get(system_column) if system_column else None
    from_column = system is not None and system != ""  # a system prompt from the system column
    if from_column:
        messages.append({"role": "system", "content": text_parts(system, f"the {system_column!r} column")})

    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise invalid("malformed", f"message {i} must be an object, got {_short(message)}")
        # A datasets row gives every message all keys seen in the column (absent ones as None).
        sharegpt = message.get("from") is not None or message.get("value") is not None
        role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
        role = message.get(role_key)
        known = SHAREGPT_ROLES if sharegpt else {r: r for r in ROLES}
        if not isinstance(role, str) or role not in known:
            expected = ", ".join(known)
            raise invalid("malformed", f"message {i}: unknown role {_short(role)} in {role_key!r}; expected one of "
                          f"{expected}")
        role = known[role]
        where = f"message {i} ({role})"
        content = message.get(content_key)
        if content is None:
            raise invalid("malformed", f"{where}: {content_key!r} is null or missing")
        if isinstance(content, str):
            parts = text_parts(content, where)
        elif isinstance(content, (list, tuple)):
            parts = []
            for j, part in enumerate(content):
                part_where = f"{where} part {j}"
                if isinstance(part, str):
                    parts.extend(text_parts(part, part_where))
                    continue
                if not isinstance(part, dict):
                    raise invalid("malformed", f"{part_where} must be an object, got {_short(part)}")
                kind = part.get("type")
                if kind == "text":
                    parts.extend(text_parts(part.get("text"), part_where))
                elif kind in ("image", "image_url"):
                    source = _image_source(part)
                    images.append(source if source is not None else take(f"{part_where} (an image part)"))
                    image_part = {"type": "image"}
                    if part.get("cells") is not None:
                        image_part["cells"] = part["cells"]
                    parts.append(image_part)
                else:
                    raise invalid("unsupported", f"{part_where} has type {_short(kind)}; only 'text' and 'image' "
                                  "parts are supported")
        else:
            raise invalid("malformed", f"{where}: {content_key!r} must be a string or a list of parts, got "
                          f"{_short(content)}")
        if role == "system" and i == 0 and from_column:
            raise invalid("malformed", f"the row has both a {system_column!r} column and a system message")
        messages.append({"role": role, "content": parts})
    if taken != len(column_images):
        raise invalid("image_count", f"the {images_column!r} column has {len(column_images)} images but the "
                      f"messages place {taken} ({placeholder!r} in the text or image parts without a source); "
                      "every image must have its place")
    return Conversation(messages, images)


def text_reserved(text: str, reserved: tuple[str, ...]) -> str | None:
    """The first of ``reserved`` that occurs in ``text``, or None."""
    return next((token for token in reserved if token in text), None)


def _image_source(part: dict) -> Any:
    for key in ("image", "path", "url"):
        if part.get(key) is not None:
            return part[key]
    url = part.get("image_url")
    if isinstance(url, dict):
        return url.get("url")
    return url


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["Conversation", "ROLES", "SHAREGPT_ROLES", "read_conversation", "text_reserved"]
