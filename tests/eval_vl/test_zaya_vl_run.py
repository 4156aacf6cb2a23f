"""`zaya-vl eval` end to end with a tiny random ZayaVL checkpoint on local data in the real schemas."""

import json

import pytest
import torch

from zaya_vl import cli
from zaya_vl.data.synthetic import generate_dataset
from zaya_vl.inference import VLAssistant
from zaya_vl.testing import tiny_vl_checkpoint


@pytest.fixture(scope="module")
def checkpoint_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    tiny_vl_checkpoint(root / "model", seed=0)
    generate_dataset(root / "synth", n_train_docs=0, n_test_docs=6, seed=3, image_size=160)
    return root / "model", root / "synth" / "eval"


def eval_args(model, data, output):
    return ["eval", "--model", str(model), "--tasks", "docvqa,ai2d", "--output", str(output), "--batch-size", "3",
            "--data", f"docvqa={data / 'docvqa.jsonl'}", "--data", f"ai2d={data / 'ai2d.jsonl'}",
            "--max-new-tokens", "docvqa=4", "--max-new-tokens", "ai2d=2", "--no-progress"]


def scores(output):
    results = json.loads((output / "results.json").read_text())
    return {task: (summary["n"], summary["n_errors"], summary["score"]) for task, summary in results["tasks"].items()}


def test_eval_writes_a_report_and_resumes_without_redoing_items(checkpoint_and_data, tmp_path, monkeypatch):
    model, data = checkpoint_and_data
    assert cli.main(eval_args(model, data, tmp_path / "full")) == 0
    full = scores(tmp_path / "full")
    n_docvqa = full["docvqa"][0]
    assert n_docvqa >= 6 and full["ai2d"][0] >= 1 and full["docvqa"][1] == 0
    assert (tmp_path / "full" / "results.md").read_text().count("docvqa") >= 1

    # A run killed half way: keep the first half of the DocVQA lines, drop the AI2D file.
    cut = tmp_path / "cut"
    (cut / "docvqa").mkdir(parents=True)
    lines = (tmp_path / "full" / "docvqa" / "predictions.jsonl").read_text().splitlines(keepends=True)
    (cut / "docvqa" / "predictions.jsonl").write_text("".join(lines[: n_docvqa // 2]))
    (cut / "run.json").write_text((tmp_path / "full" / "run.json").read_text())
    asked = []
    real_predict = VLAssistant.predict
    monkeypatch.setattr(VLAssistant, "predict", lambda self, requests: asked.extend(requests)
                        or real_predict(self, requests))
    assert cli.main(eval_args(model, data, cut)) == 0
    assert sum(r.task == "docvqa" for r in asked) == n_docvqa - n_docvqa // 2
    assert sum(r.task == "ai2d" for r in asked) == full["ai2d"][0]
    assert scores(cut) == full  # greedy decoding: the resumed run reproduces the report


@torch.no_grad()
def test_batched_replies_equal_one_at_a_time(checkpoint_and_data):
    model, data = checkpoint_and_data
    assistant = VLAssistant.from_pretrained(str(model), batch_size=4)
    rows = [json.loads(line) for line in (data / "docvqa.jsonl").read_text().splitlines()][:4]
    images = [[data / row["image"]] for row in rows]
    prompts = [f"<image>{row['question']}" for row in rows]
    batched = assistant.generate(images, prompts, max_new_tokens=5)
    alone = [assistant.generate([img], [p], max_new_tokens=5)[0] for img, p in zip(images, prompts)]
    assert batched == alone


def test_ask_command_answers_with_a_given_checkpoint(checkpoint_and_data, capsys):
    model, data = checkpoint_and_data
    row = json.loads((data / "docvqa.jsonl").read_text().splitlines()[0])
    assert cli.main(["ask", "--model", str(model), "--image", str(data / row["image"]), "--max-new-tokens", "3",
                     row["question"]]) == 0
    reply = capsys.readouterr().out.strip()
    assistant = VLAssistant.from_pretrained(str(model))
    assert reply == assistant.ask(data / row["image"], row["question"], max_new_tokens=3)
