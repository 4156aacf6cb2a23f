"""`zaya-vl demo` end to end on a tiny random checkpoint, example images and a small synthetic eval split."""

import json
import shutil

import pytest

from zaya_vl import cli
from zaya_vl.data.synthetic import generate_dataset, render_example
from zaya_vl.demo import QUESTIONS, one_line, run_demo
from zaya_vl.eval_vl.metrics import ai2d_exact_match, anls, option_letters

LIMIT = 2


@pytest.fixture(scope="module")
def demo_inputs(tmp_path_factory):
    from zaya_vl.testing import tiny_vl_checkpoint

    root = tmp_path_factory.mktemp("demo")
    # std 0.6: replies that depend on the image and the prompt (at 0.1 every reply is the same token repeated).
    tiny_vl_checkpoint(root / "model", seed=0, std=0.6)
    generate_dataset(root / "synth", n_train_docs=0, n_test_docs=4, seed=3, image_size=160)
    eval_dir = root / "synth" / "eval"
    examples = root / "examples"
    for kind in ("form", "chart", "diagram"):
        render_example(kind, examples / f"{kind}.png", seed=0, image_size=160)
    # The example receipt is the image of the first eval row, which asks "What is the total?" too, so the demo's
    # answer must equal the benchmark's prediction for that row: same prompt, same image, same model.
    first = json.loads((eval_dir / "docvqa.jsonl").read_text().splitlines()[0])
    assert first["question"] == "What is the total?" and "receipt" in first["question_types"]
    shutil.copy(eval_dir / first["image"], examples / "receipt.png")
    return root / "model", examples, eval_dir


def rows(path, n):
    return [json.loads(line) for line in path.read_text().splitlines()][:n]


def test_demo_answers_every_question_and_reports_scores_it_can_back_up(demo_inputs, tmp_path, capsys):
    model, examples, eval_dir = demo_inputs
    out = tmp_path / "demo"
    returned = run_demo(model, examples, eval_dir, out, limit=LIMIT, batch_size=2, max_new_tokens=6)
    printed = capsys.readouterr().out

    questions = [(image, q if isinstance(q, str) else q[0]) for image, qs in QUESTIONS.items() for q in qs]
    answer_lines = [line for line in printed.splitlines() if line.split(" | ")[0].strip() in QUESTIONS]
    assert len(answer_lines) == len(questions) == len(returned["examples"])
    for line, (image, question), example in zip(answer_lines, questions, returned["examples"]):
        image_cell, question_cell, rest = line.split(" | ", 2)
        answer_cell, seconds_cell = rest.rsplit(" | ", 1)
        assert image_cell.strip() == image and question_cell.strip().startswith(question)
        assert answer_cell.strip() == one_line(example["answer"]).strip() and float(seconds_cell) >= 0

    results = json.loads((out / "results.json").read_text())
    assert {k: v for k, v in returned.items() if k != "examples"} == results
    assert str(out) in printed and (out / "results.md").is_file()

    # Rescore the predictions file independently with the metric functions.
    docvqa_rows, ai2d_rows = rows(eval_dir / "docvqa.jsonl", LIMIT), rows(eval_dir / "ai2d.jsonl", LIMIT)
    docvqa_preds = rows(out / "docvqa" / "predictions.jsonl", 100)
    ai2d_preds = rows(out / "ai2d" / "predictions.jsonl", 100)
    assert [p["id"] for p in docvqa_preds] == [r["questionId"] for r in docvqa_rows]
    assert [p["id"] for p in ai2d_preds] == [str(i) for i in range(len(ai2d_rows))]  # AI2D ids are row indices
    docvqa_scores = [anls(p["prediction"], r["answers"]) for p, r in zip(docvqa_preds, docvqa_rows)]
    ai2d_scores = [ai2d_exact_match(p["prediction"], option_letters(4)[int(r["answer"])])
                   for p, r in zip(ai2d_preds, ai2d_rows)]
    for task, scores in (("docvqa", docvqa_scores), ("ai2d", ai2d_scores)):
        summary = results["tasks"][task]
        assert summary["n"] == LIMIT and summary["n_errors"] == 0
        assert summary["score"] == round(100 * sum(scores) / len(scores), 2)
        assert f"{task:<8} {summary['metric']:<12} {summary['score']:>7.2f} {LIMIT:>5}" in printed

    by_type = results["tasks"]["docvqa"]["breakdowns"]["question_types"]
    for label in {label for r in docvqa_rows for label in r["question_types"]}:
        assert by_type[label]["n"] == sum(label in r["question_types"] for r in docvqa_rows)
        assert f"{label:<14} {by_type[label]['score']:>7.2f}" in printed

    receipt_total = returned["examples"][0]
    assert (receipt_total["image"], receipt_total["question"]) == ("receipt.png", "What is the total?")
    assert receipt_total["answer"] == docvqa_preds[0]["prediction"]


def test_missing_model_or_images_say_how_to_rebuild_them(demo_inputs, tmp_path):
    model, examples, eval_dir = demo_inputs
    with pytest.raises(FileNotFoundError, match="make tiny-model") as error:
        run_demo(tmp_path / "no_model", examples, eval_dir, tmp_path / "out")
    assert str(tmp_path / "no_model") in str(error.value)
    with pytest.raises(FileNotFoundError, match="make tiny-model") as error:
        run_demo(model, tmp_path / "no_examples", eval_dir, tmp_path / "out")
    assert str(tmp_path / "no_examples" / "receipt.png") in str(error.value)
    with pytest.raises(SystemExit, match="make tiny-model"):
        cli.main(["demo", "--model", str(tmp_path / "no_model"), "--eval-dir", str(eval_dir)])
    assert not (tmp_path / "out").exists()


def test_a_demo_run_of_another_model_is_started_over_and_other_runs_are_left_alone(tmp_path):
    from zaya_vl.demo import _forget_stale_demo_run

    stale = {"model": "/old/model", "config": {"demo": True, "model_files": "a", "data_files": "b"}}
    (tmp_path / "docvqa").mkdir()
    (tmp_path / "docvqa" / "predictions.jsonl").write_text('{"id": "x"}\n')
    (tmp_path / "run.json").write_text(json.dumps(stale))
    _forget_stale_demo_run(tmp_path, stale)  # same model and data: resumed, nothing removed
    assert (tmp_path / "docvqa" / "predictions.jsonl").exists()
    _forget_stale_demo_run(tmp_path, {**stale, "config": {**stale["config"], "model_files": "c"}})
    assert not (tmp_path / "docvqa" / "predictions.jsonl").exists() and not (tmp_path / "run.json").exists()

    other = {"model": "/some/model", "config": {"temperature": 0.0}}  # a `zaya-vl eval` run: not ours to delete
    (tmp_path / "run.json").write_text(json.dumps(other))
    _forget_stale_demo_run(tmp_path, stale)
    assert (tmp_path / "run.json").exists()


def test_rerunning_the_demo_resumes_its_own_run(demo_inputs, tmp_path, capsys):
    model, examples, eval_dir = demo_inputs
    out = tmp_path / "demo"
    run_demo(model, examples, eval_dir, out, limit=LIMIT, batch_size=2, max_new_tokens=6)
    predictions = (out / "docvqa" / "predictions.jsonl").read_bytes()
    capsys.readouterr()
    run_demo(model, examples, eval_dir, out, limit=LIMIT, batch_size=2, max_new_tokens=6)
    assert "starting the eval over" not in capsys.readouterr().out
    assert (out / "docvqa" / "predictions.jsonl").read_bytes() == predictions
