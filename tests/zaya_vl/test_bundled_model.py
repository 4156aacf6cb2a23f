"""The tiny ZAYA1-VL bundled in examples/tiny_docvqa/: a complete checkpoint of a few MB, trained on synthetic
documents that its held-out eval split does not share, and it really reads them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from zaya_vl import ZayaVL, ZayaVLProcessor
from zaya_vl.data.documents import make_document, plan_split
from zaya_vl.prompts import DOCVQA_POST_PROMPT
from zaya_vl.eval_vl.metrics import anls
from zaya_vl.inference import VLAssistant

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "examples" / "tiny_docvqa"
sys.path.insert(0, str(BUNDLE))
import build  # noqa: E402  (the committed recipe: seed, sizes)

pytestmark = pytest.mark.skipif(not (BUNDLE / "model" / "config.json").exists(),
                                reason="bundled model not built (make tiny-model)")


def _eval_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (BUNDLE / "eval" / name).read_text().splitlines()]


def test_bundle_is_a_complete_checkpoint_of_a_few_megabytes():
    files = {path.name: path.stat().st_size for path in (BUNDLE / "model").iterdir()}
    assert sum(files.values()) < 12 * 2**20, files
    model = ZayaVL.from_pretrained(BUNDLE / "model")  # strict: any missing or unexpected key raises
    processor = ZayaVLProcessor.from_pretrained(BUNDLE / "model")
    assert model.config.image_token_id == processor.image_token_id
    assert model.config.text_config.vocab_size >= len(processor.tokenizer)
    # Stored in bf16 (half the size); the router stays fp32 (ZAYA1 routes in fp32), and VLAssistant runs fp32 on CPU.
    assert {p.dtype for n, p in model.named_parameters() if ".mlp.gate." not in n} == {torch.bfloat16}


def test_held_out_documents_are_not_in_the_training_split():
    """Re-plan both splits from the committed seed (no rendering): the bundled eval documents are the test
    split's, their answers are what the generator asked, and no test document's content is in train."""
    tiers = ("easy", "hard")
    seen: set[str] = set()
    train = plan_split(build.SEED, "train", build.N_TRAIN_DOCS, tiers, seen)
    train_prints = {doc.fingerprint() for doc in train}
    test = {doc.doc_id: doc for doc in plan_split(build.SEED, "test", build.N_TEST_DOCS, tiers, seen)}
    rows = _eval_rows("docvqa.jsonl")
    assert len(rows) > 100
    for row in rows:
        doc = test[row["ucsf_document_id"]]
        assert doc.fingerprint() not in train_prints
        qa = doc.questions[int(row["questionId"].rsplit("-q", 1)[1])]
        assert list(qa.answers) == row["answers"]
    assert make_document(build.SEED, "test", 0, "receipt", "easy").doc_id in test


def _easy_scores(kinds: set[str], at_least: int) -> dict[str, float]:
    """Mean ANLS (lmms-eval's DocVQA metric) and exact-match accuracy of the bundled model on every held-out easy
    question about ``kinds``, asked as the eval runner, `zaya-vl ask` and the training rows put it: the image,
    then the question."""
    rows = [row for row in _eval_rows("docvqa.jsonl") if "easy" in row["question_types"]
            and kinds & set(row["question_types"])]
    assert len(rows) >= at_least
    assistant = VLAssistant.from_pretrained(str(BUNDLE / "model"), batch_size=16)
    replies = assistant.generate([[BUNDLE / "eval" / row["image"]] for row in rows],
                                 [row["question"] + DOCVQA_POST_PROMPT for row in rows], max_new_tokens=24)
    pairs = list(zip(replies, rows))
    return {"anls": sum(anls(reply, row["answers"]) for reply, row in pairs) / len(rows),
            "accuracy": sum(reply.strip() in row["answers"] for reply, row in pairs) / len(rows)}


def test_it_meets_the_issue_bar_on_easy_receipts_and_forms():
    """Issue 8's bar: ANLS >= 0.7. An untrained model of the same shape scores ~0 here, and an earlier bundled
    model that had learnt the answer formats without reading scored 0.17 (see README)."""
    assert _easy_scores({"receipt", "form"}, at_least=100)["anls"] >= 0.7


@pytest.fixture(scope="module")
def easy_chart_accuracy() -> float:
    return _easy_scores({"chart"}, at_least=30)["accuracy"]


def test_it_reads_easy_charts(easy_chart_accuracy):
    """Guessing scores ~0.2 (a label out of 3-5 for highest/lowest, a value out of 9): 0.45 needs the bars and
    the printed labels and values read."""
    assert easy_chart_accuracy >= 0.45


@pytest.mark.xfail(strict=True, reason="the chart bar (accuracy 0.6) is not met: highest/lowest are read, "
                   "values mostly not (see README); strict, so this turns red when it is met")
def test_it_meets_the_issue_bar_on_easy_charts(easy_chart_accuracy):
    assert easy_chart_accuracy >= 0.6
