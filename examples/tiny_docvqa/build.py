"""Rebuild the tiny ZAYA1-VL bundled in examples/tiny_docvqa/ from the committed config and seed.

    python examples/tiny_docvqa/build.py            # or: make tiny-model
    python examples/tiny_docvqa/build.py --steps data,tokenizer   # just some steps

Steps (each skips work that is already complete, so an interrupted build resumes):
  data       synthetic documents (zaya_vl.data.synthetic), seed SEED: easy + hard tiers, train/test disjoint
  tokenizer  a 1024-token BPE (digits split) trained on the train split's text + the Qwen2-VL image processor
  train      `zaya-vl train examples/tiny_docvqa.yaml --resume`: every easy-tier question as asked at eval time
             (one question per row), a "Read the text." transcript row per easy page and two chart steps per
             easy chart (chart_steps); every easy page's image part carries its cells, so the cell loss
             teaches the from-scratch tower each glyph
  package    the trained model + processor -> examples/tiny_docvqa/model; a held-out eval split ->
             examples/tiny_docvqa/eval; one example page per kind -> examples/<kind>.png
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "tiny_docvqa.yaml"
WORK = ROOT / "build" / "tiny_docvqa"
BUNDLE = ROOT / "examples" / "tiny_docvqa"
SEED = 0
IMAGE_SIZE = 336  # 12 x 12 merged tokens; the easy tier prints one character per token (render.Canvas.grid_text)
N_TRAIN_DOCS, N_TEST_DOCS = 12000, 400  # both tiers alternate; training uses the easy half
N_BUNDLED_EVAL_DOCS = 100  # test documents written to the repo: 12-13 per (tier, kind)
TOKENIZER_VOCAB = 1024
PIXELS = IMAGE_SIZE * IMAGE_SIZE  # min = max: every page becomes exactly 12 x 12 tokens


def step_data() -> None:
    from zaya_vl.prompts import docvqa_prompt
    from zaya_vl.data.synthetic import generate_dataset

    data = WORK / "data"
    if not (data / "manifest.json").exists():
        generate_dataset(data, N_TRAIN_DOCS, N_TEST_DOCS, SEED, tiers=("easy", "hard"), image_size=IMAGE_SIZE,
                         workers=2, progress=True)
    rows = [json.loads(line) for line in open(data / "train.jsonl", encoding="utf-8")]
    easy = [row for row in rows if row["tier"] == "easy"]
    reads, steps = [], []
    rng = random.Random(SEED)
    for line in open(data / "documents.jsonl", encoding="utf-8"):
        doc = json.loads(line)
        if doc["split"] != "train" or doc["tier"] != "easy":
            continue
        text = transcript(doc["kind"], doc["content"])
        if text:
            reads.append(_page_row(doc, "read", READ_PROMPT, text))
        if doc["kind"] == "chart":
            steps += [_page_row(doc, name, docvqa_prompt(prompt), answer)
                      for name, prompt, answer in chart_steps(doc["content"], rng)]
    mix = easy + reads + steps
    random.Random(SEED).shuffle(mix)
    (data / "train_single.jsonl").write_text("".join(json.dumps(row) + "\n" for row in mix), encoding="utf-8")
    print(f"data: {len(easy)} easy questions + {len(reads)} page transcripts + {len(steps)} chart steps "
          f"-> {data / 'train_single.jsonl'}")


READ_PROMPT = "Read the text."


def _page_row(doc: dict, name: str, prompt: str, answer: str) -> dict:
    from zaya_vl.data.formats import page_chat_row

    return page_chat_row(f"{doc['doc_id']}-{name}", doc["doc_id"], doc["kind"], doc["tier"], doc["image"], prompt,
                         answer, doc["cells"])


def chart_steps(content: dict, rng: random.Random) -> list[tuple[str, str, str]]:
    """Training-only questions for the two halves of "Which bar is the highest?": find the extreme value (an
    argmax over the printed values) and name the bar that has a given value (a lookup from a value's row to
    its label). Trained on the final questions alone, the model answered every highest/lowest question with one
    constant label at step 2,000 while it read values (see README)."""
    labels, values = content["labels"], content["values"]
    k = rng.randrange(len(labels))
    extreme = rng.choice(("highest", "lowest"))
    best = (max if extreme == "highest" else min)(values)
    return [("extreme", f"What is the {extreme} value?", str(best)),
            ("lookup", f"Which bar has the value {values[k]}?", labels[k])]


def transcript(kind: str, content: dict) -> str | None:
    """The page's text in reading order: a dense reading target for every value on the page, not only the one
    a question asks about (receipts, forms, charts; diagrams have no text to read)."""
    from zaya_vl.data.receipts import money

    if kind == "receipt":
        items = [f"{item['name']} {money(item['cents'])}" for item in content["items"]]
        total = money(sum(item["cents"] for item in content["items"]))
        return "\n".join([content["vendor"], content["title"], content["date"], *items, f"TOTAL {total}"])
    if kind == "form":
        return "\n".join([content["title"], *(f"{label}: {value}" for label, value in content["fields"])])
    if kind == "chart":
        return "\n".join([content["title"], *(f"{label} {value}" for label, value in
                                               zip(content["labels"], content["values"]))])
    return None


def step_tokenizer() -> None:
    from transformers import Qwen2VLImageProcessorPil

    from zaya_vl.data.synthetic import iter_text
    from zaya_vl.processing import ZayaVLProcessor
    from zaya_vl.tokenization import train_tokenizer

    out = WORK / "processor"
    if (out / "processor_config.json").exists() or (out / "preprocessor_config.json").exists():
        return
    tokenizer = train_tokenizer(iter_text(WORK / "data", splits=("train",)), vocab_size=TOKENIZER_VOCAB,
                                split_digits=True)
    processor = ZayaVLProcessor(image_processor=Qwen2VLImageProcessorPil(min_pixels=PIXELS, max_pixels=PIXELS),
                                tokenizer=tokenizer)
    processor.save_pretrained(out)
    print(f"tokenizer: {len(tokenizer)} tokens -> {out}")


def step_train() -> None:
    subprocess.run([sys.executable, "-m", "zaya_vl.training", str(CONFIG), "--resume"], cwd=ROOT, check=True)


def step_package() -> None:
    from zaya_vl.data.synthetic import render_example

    import torch

    from zaya_vl import ZayaVL, ZayaVLProcessor

    final = ROOT / "runs" / "tiny_docvqa" / "final"
    model_dir = BUNDLE / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    # bf16 on disk halves the repo weight; the router stays fp32 (_keep_in_fp32_modules_strict) and
    # VLAssistant loads fp32 on CPU.
    ZayaVL.from_pretrained(final, dtype=torch.bfloat16).save_pretrained(model_dir)
    ZayaVLProcessor.from_pretrained(final).save_pretrained(model_dir)
    _bundle_eval_split(WORK / "data", BUNDLE / "eval")
    for kind in ("receipt", "form", "chart", "diagram"):
        render_example(kind, ROOT / "examples" / f"{kind}.png", seed=SEED, image_size=IMAGE_SIZE)
    print(f"package: model -> {model_dir}, eval split -> {BUNDLE / 'eval'}, example pages -> examples/*.png")


def _bundle_eval_split(data: Path, out: Path) -> None:
    """The first N_BUNDLED_EVAL_DOCS test documents' rows and images (test docs cycle through tier x kind)."""
    keep = {f"test-{tier}-{kind}-{i:06d}" for i in range(N_BUNDLED_EVAL_DOCS)
            for tier in ("easy", "hard") for kind in ("receipt", "form", "chart", "diagram")}
    shutil.rmtree(out, ignore_errors=True)
    (out / "images").mkdir(parents=True)
    for name in ("docvqa.jsonl", "ai2d.jsonl"):
        rows = []
        for line in open(data / "eval" / name, encoding="utf-8"):
            row = json.loads(line)
            doc_id = Path(row["image"]).stem
            if doc_id in keep:
                shutil.copy(data / "images" / f"{doc_id}.png", out / "images" / f"{doc_id}.png")
                row["image"] = f"images/{doc_id}.png"
                rows.append(row)
        (out / name).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


STEPS = {"data": step_data, "tokenizer": step_tokenizer, "train": step_train, "package": step_package}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, from {','.join(STEPS)}")
    for name in parser.parse_args(argv).steps.split(","):
        STEPS[name]()


if __name__ == "__main__":
    main()
