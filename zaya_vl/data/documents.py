"""What a synthetic document is, how a split's documents are drawn from the seed, and how one is
rendered. Every document gets its own RNG keyed by (seed, split, index), so documents do not depend
on each other and train/test never share a random stream.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

from PIL import Image

from . import charts, diagrams, forms, receipts
from .formats import QA
from .render import Box, Canvas, Style, sample_style

# kind -> module with sample(rng, tier), ask(content, rng), render(content, canvas), strings(content)
KINDS: dict[str, ModuleType] = {m.KIND: m for m in (receipts, forms, charts, diagrams)}
TIERS = ("easy", "hard")
_RNG_NAMESPACE = "zaya-vl-synthetic-v1"


@dataclass(frozen=True)
class Document:
    doc_id: str
    split: str
    index: int
    kind: str
    tier: str
    style: Style
    content: Any  # the kind's dataclass (Receipt, Form, Chart, Diagram): everything printed on the page
    questions: tuple[QA, ...]

    @property
    def image(self) -> str:
        """Image path relative to the dataset root."""
        return f"images/{self.doc_id}.png"

    def fingerprint(self) -> str:
        """Identity of what is printed (not how), to keep the same document out of two splits."""
        return self.kind + json.dumps(asdict(self.content), sort_keys=True)

    def strings(self) -> list[str]:
        return KINDS[self.kind].strings(self.content)


def make_document(seed: int, split: str, index: int, kind: str, tier: str, attempt: int = 0) -> Document:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(KINDS)}")
    # Seeding random.Random with a str hashes it with SHA-512: stable across runs and PYTHONHASHSEED.
    rng = random.Random(f"{_RNG_NAMESPACE}/{seed}/{split}/{index}/{kind}/{tier}/{attempt}")
    style = sample_style(rng, tier)
    module = KINDS[kind]
    content = module.sample(rng, tier)
    questions = tuple(module.ask(content, rng))
    return Document(f"{split}-{tier}-{kind}-{index:06d}", split, index, kind, tier, style, content, questions)


def plan_split(seed: int, split: str, n_docs: int, tiers: tuple[str, ...], seen: set[str]) -> list[Document]:
    """The split's documents, cycling through every (tier, kind) so each gets an equal share.

    A document whose content is already in `seen` (from this or an earlier split) is redrawn with the
    next attempt number; new fingerprints are added to `seen`.
    """
    combos = [(tier, kind) for tier in tiers for kind in KINDS]
    docs = []
    for index in range(n_docs):
        tier, kind = combos[index % len(combos)]
        for attempt in range(1000):
            doc = make_document(seed, split, index, kind, tier, attempt)
            if doc.fingerprint() not in seen:
                break
        else:
            raise RuntimeError(f"could not draw a new {kind} document for {split}[{index}]")
        seen.add(doc.fingerprint())
        docs.append(doc)
    return docs


@dataclass(frozen=True)
class Page:
    image: Image.Image
    boxes: dict[str, Box]  # named answer boxes, in pixels
    cells: list[str] | None  # the glyphs drawn one per grid cell, one string per row (Canvas.cell_rows)


def render_page(doc: Document, size: tuple[int, int]) -> Page:
    canvas = Canvas(size, doc.style)
    boxes = KINDS[doc.kind].render(doc.content, canvas)
    return Page(canvas.finish(), boxes, canvas.cell_rows())


def render_document(doc: Document, size: tuple[int, int]) -> tuple[Image.Image, dict[str, Box]]:
    page = render_page(doc, size)
    return page.image, page.boxes
