"""Forms: a title and 3-4 labelled boxes (name, city, ID number, ...) filled from small vocabularies."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .formats import QA
from .render import Box, Canvas

KIND = "form"
TITLES = ("APPLICATION FORM", "MEMBER FORM", "VISITOR FORM", "REGISTRATION")
FIRST_NAMES = ("Anna", "Ben", "Carl", "Dana", "Eva", "Finn", "Gina", "Hugo", "Ivy", "Jack")
LAST_NAMES = ("Brown", "Clark", "Davis", "Evans", "Green", "Hill", "King", "Lee", "Moore", "Young")
CITIES = ("Paris", "Berlin", "Madrid", "Rome", "Oslo", "Vienna", "Dublin", "Lisbon", "Prague", "Warsaw")
DEPARTMENTS = ("Sales", "Finance", "Legal", "Research", "Support", "Design")
# label printed on the form -> how a question names it; fields keep this order on the page.
FIELD_QUESTIONS = {"Name": "name", "City": "city", "ID number": "ID number",
                   "Phone": "phone number", "Department": "department"}


@dataclass(frozen=True)
class Form:
    title: str
    fields: tuple[tuple[str, str], ...]  # (label, value) in page order


def _value(label: str, rng: random.Random) -> str:
    if label == "Name":
        return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    if label == "City":
        return rng.choice(CITIES)
    if label == "ID number":
        return f"{rng.randint(100000, 999999)}"
    if label == "Phone":
        return f"{rng.randint(200, 999)}-{rng.randint(0, 9999):04d}"
    return rng.choice(DEPARTMENTS)


def sample(rng: random.Random, tier: str) -> Form:
    # Easy forms carry every field in a fixed order; hard ones a random 3-4 of them.
    n = len(FIELD_QUESTIONS) if tier == "easy" else rng.randint(3, 4)
    chosen = set(rng.sample(list(FIELD_QUESTIONS), n))
    labels = [label for label in FIELD_QUESTIONS if label in chosen]
    return Form(rng.choice(TITLES), tuple((label, _value(label, rng)) for label in labels))


def ask(form: Form, rng: random.Random) -> list[QA]:
    return [QA(FIELD_QUESTIONS[label].replace(" ", "_"), f"What is the {FIELD_QUESTIONS[label]}?",
               (value,), box=f"field{k}")
            for k, (label, value) in enumerate(form.fields)]


def strings(form: Form) -> list[str]:
    return [form.title] + [s for label, value in form.fields for s in (label + ":", value)]


def render(form: Form, c: Canvas) -> dict[str, Box]:
    if c.style.tier == "easy":
        return _render_grid(form, c)
    left, right = c.px(20) + c.ox, c.width - c.px(20) + c.ox
    y = c.px(12) + c.oy
    title_font = c.fit_font([form.title], 24, right - left, bold=True)
    c.text(c.width // 2 + c.ox, y, form.title, title_font, "center")
    y += title_font.line_height + c.px(10)

    label_font, value_font = c.font(16), c.font(22)
    pad = c.px(5)
    boxes: dict[str, Box] = {}
    for k, (label, value) in enumerate(form.fields):
        c.text(left, y, label + ":", label_font)
        y += label_font.line_height + c.px(2)
        box_bottom = y + value_font.line_height + 2 * pad
        c.draw.rectangle([left, y, right, box_bottom], outline=c.style.ink, width=max(1, c.px(2)))
        boxes[f"field{k}"] = c.text(left + 2 * pad, y + pad + max(1, c.px(2)), value, value_font)
        y = box_bottom + c.px(10)
    return boxes


def _render_grid(form: Form, c: Canvas) -> dict[str, Box]:
    """Easy tier: title, then label row / value row per field, values one character per grid cell."""
    cell, boxes = c.cell(), {}
    title_font = c.fit_font([form.title], 22, c.width - 2 * c.px(8), bold=True)
    c.text(c.width // 2, (cell - title_font.line_height) // 2 + 2, form.title, title_font, "center")
    label_font, glyphs = c.font(16), c.font(22)
    for k, (label, value) in enumerate(form.fields):
        c.text(c.px(8), (1 + 2 * k) * cell + cell - label_font.line_height, label + ":", label_font)
        boxes[f"field{k}"] = c.grid_text(1, 2 + 2 * k, value, glyphs)
    return boxes
