"""Deterministic synthetic document-QA data: receipts, forms, charts and diagrams drawn with PIL.

    python -m zaya_vl.data.synthetic --out data/synth --train 8000 --test 400 --seed 0 --tiers easy,hard

Writes, under the output folder:
    images/<doc_id>.png           one image per document, train and test
    train.jsonl, test.jsonl       chat rows (one per question) for the trainer; image paths relative
    eval/docvqa.jsonl             test receipts/forms/charts in the lmms-lab/DocVQA schema
    eval/ai2d.jsonl               test diagrams in the lmms-lab/ai2d schema
    documents.jsonl               per document: content, style, printed strings, answer boxes, cells
    manifest.json                 seed, sizes, counts; written last, so its presence means complete
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import PIL
from tqdm import tqdm

from zaya_vl.fileio import write_atomic

from .documents import KINDS, TIERS, Document, make_document, plan_split, render_document, render_page
from .formats import ai2d_row, chat_row, docvqa_row, jsonl_bytes, png_bytes
from .render import FONT_NAME, Box

GENERATOR_VERSION = "2"  # 2: easy-tier charts are horizontal bars on the token grid
DEFAULT_IMAGE_SIZE = 336
MIN_IMAGE_SIDE = 160  # below this the easy-tier text is no longer legible


def _image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < MIN_IMAGE_SIDE:
        raise ValueError(f"image_size must be an int or (width, height), each >= {MIN_IMAGE_SIDE}; got {image_size}")
    return size


def _render_png(job: tuple[Document, tuple[int, int]]) -> tuple[bytes, dict[str, Box], list[str] | None]:
    page = render_page(*job)
    return png_bytes(page.image), page.boxes, page.cells


def _document_row(doc: Document, boxes: dict[str, Box], cells: list[str] | None) -> dict:
    return {"doc_id": doc.doc_id, "split": doc.split, "kind": doc.kind, "tier": doc.tier, "image": doc.image,
            "content": asdict(doc.content), "style": asdict(doc.style), "text": doc.strings(),
            "boxes": {name: list(box) for name, box in boxes.items()},
            "questions": [{"id": f"{doc.doc_id}-q{k}", **asdict(qa)} for k, qa in enumerate(doc.questions)],
            "cells": cells}


def _counts(docs: list[Document]) -> dict:
    documents: dict[str, dict[str, int]] = {}
    questions: dict[str, dict[str, int]] = {}
    for d in docs:
        documents.setdefault(d.kind, {}).setdefault(d.tier, 0)
        questions.setdefault(d.kind, {}).setdefault(d.tier, 0)
        documents[d.kind][d.tier] += 1
        questions[d.kind][d.tier] += len(d.questions)
    return {"documents": len(docs), "questions": sum(len(d.questions) for d in docs),
            "documents_by_kind_tier": documents, "questions_by_kind_tier": questions}


def generate_dataset(out_dir: str | Path, n_train_docs: int, n_test_docs: int, seed: int,
                     tiers: Sequence[str] = ("easy",), image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE,
                     workers: int = 1, progress: bool = False) -> dict:
    """Generate the dataset under `out_dir` and return its manifest. Same arguments -> same bytes."""
    tiers, size = tuple(tiers), _image_size(image_size)
    if not tiers or any(t not in TIERS for t in tiers) or len(set(tiers)) != len(tiers):
        raise ValueError(f"tiers must be distinct values from {TIERS}; got {tiers}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # an interrupted re-run must not look complete

    seen: set[str] = set()
    splits = {"train": plan_split(seed, "train", n_train_docs, tiers, seen),
              "test": plan_split(seed, "test", n_test_docs, tiers, seen)}
    docs = splits["train"] + splits["test"]

    jobs = [(doc, size) for doc in docs]
    bar = tqdm(total=len(jobs), desc="rendering documents", unit="doc", disable=not progress)
    boxes: dict[str, dict[str, Box]] = {}
    cells: dict[str, list[str] | None] = {}
    with ProcessPoolExecutor(workers) if workers > 1 else _Serial() as pool:
        for doc, (png, doc_boxes, doc_cells) in zip(docs, pool.map(_render_png, jobs, chunksize=16)):
            write_atomic(out / doc.image, png)
            boxes[doc.doc_id], cells[doc.doc_id] = doc_boxes, doc_cells
            bar.update()
    bar.close()

    docvqa, ai2d = [], []
    for split, split_docs in splits.items():
        rows = [chat_row(f"{d.doc_id}-q{k}", d.doc_id, d.kind, d.tier, d.image, qa, cells[d.doc_id])
                for d in split_docs for k, qa in enumerate(d.questions)]
        write_atomic(out / f"{split}.jsonl", jsonl_bytes(rows))
    for d in splits["test"]:
        for k, qa in enumerate(d.questions):
            image = "../" + d.image  # eval/*.jsonl sit one folder below the images
            if qa.is_multiple_choice:
                ai2d.append(ai2d_row(f"{d.doc_id}-q{k}", image, qa))
            else:
                docvqa.append(docvqa_row(f"{d.doc_id}-q{k}", d.doc_id, d.index, d.kind, d.tier, image, qa))
    write_atomic(out / "eval" / "docvqa.jsonl", jsonl_bytes(docvqa))
    write_atomic(out / "eval" / "ai2d.jsonl", jsonl_bytes(ai2d))
    write_atomic(out / "documents.jsonl", jsonl_bytes(_document_row(d, boxes[d.doc_id], cells[d.doc_id])
                                                                 for d in docs))

    manifest = {
        "generator": "zaya_vl.data.synthetic", "generator_version": GENERATOR_VERSION, "seed": seed,
        "tiers": list(tiers), "image_size": list(size), "font": FONT_NAME, "pillow_version": PIL.__version__,
        "splits": {split: _counts(split_docs) for split, split_docs in splits.items()},
        "eval": {"docvqa": len(docvqa), "ai2d": len(ai2d)},
        "files": {"train": "train.jsonl", "test": "test.jsonl", "docvqa": "eval/docvqa.jsonl",
                  "ai2d": "eval/ai2d.jsonl", "documents": "documents.jsonl", "images": "images/"},
    }
    write_atomic(out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


class _Serial:
    """Stands in for a process pool when workers == 1 (no pickling, easier to debug)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, items, chunksize=1):
        return map(fn, items)


def iter_text(out_dir: str | Path, splits: Sequence[str] = ("train", "test")) -> Iterator[str]:
    """Every prompt, answer and printed document string of a generated dataset, for training a tokenizer."""
    out = Path(out_dir)
    for split in splits:
        with open(out / f"{split}.jsonl", encoding="utf-8") as f:
            for line in f:
                for message in json.loads(line)["messages"]:
                    yield from (part["text"] for part in message["content"] if part["type"] == "text")
    with open(out / "documents.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["split"] in splits:
                yield from row["text"]


@dataclass(frozen=True)
class Example:
    document: Document
    boxes: dict[str, Box]


def render_example(kind: str, path: str | Path, seed: int = 0, tier: str = "easy",
                   image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE) -> Example:
    """Render one document of `kind` to `path` (PNG); its questions are on `.document.questions`."""
    doc = make_document(seed, "example", 0, kind, tier)
    image, boxes = render_document(doc, _image_size(image_size))
    write_atomic(path, png_bytes(image))
    return Example(doc, boxes)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m zaya_vl.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--train", type=int, required=True, help="number of training documents")
    parser.add_argument("--test", type=int, required=True, help="number of held-out test documents")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiers", default="easy", help=f"comma-separated, from {','.join(TIERS)}")
    parser.add_argument("--image-size", default=str(DEFAULT_IMAGE_SIZE), help="N or WxH pixels")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    args = parser.parse_args(argv)
    size = [int(s) for s in args.image_size.lower().split("x")]
    manifest = generate_dataset(args.out, args.train, args.test, args.seed, tuple(args.tiers.split(",")),
                                size[0] if len(size) == 1 else size, workers=args.workers, progress=True)
    for split, counts in manifest["splits"].items():
        print(f"{split}: {counts['documents']} documents, {counts['questions']} questions")
    print(f"eval: {manifest['eval']['docvqa']} DocVQA rows, {manifest['eval']['ai2d']} AI2D rows -> {args.out}")
    return manifest


if __name__ == "__main__":
    main()
