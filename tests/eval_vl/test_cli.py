"""`zaya-vl eval` / `zaya-vl score` through argparse, as zaya_vl/cli.py will mount them."""

import json

import pytest

from zaya_vl.eval_vl import cli, run_eval
from zaya_vl.eval_vl.rescore import score_predictions


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_score_command_scores_another_models_predictions(tiny_data, tmp_path, capsys):
    predictions = write_jsonl(tmp_path / "p.jsonl", [
        {"question_index": 0, "response": "B"},
        {"question_index": 1, "response": "The answer is A"},
        {"question_index": 2, "response": "C."},
    ])
    code = cli.main(["score", "--task", "ai2d", "--data", str(tiny_data.ai2d), "--predictions", str(predictions),
                     "--id-key", "question_index", "--prediction-key", "response", "--output", str(tmp_path / "out")])
    assert code == 0
    captured = capsys.readouterr()
    assert "| ai2d | exact_match | 66.67 | 3 | 0 | lenient 100.00 |" in captured.out
    assert "2 items of the data have no prediction" in captured.err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["tasks"]["ai2d"]["n_missing"] == 2
    scored = [json.loads(line) for line in (tmp_path / "out" / "scored.jsonl").read_text().splitlines()]
    assert [(r["id"], r["score"]) for r in scored] == [("0", 1.0), ("1", 0.0), ("2", 1.0)]


def test_score_reproduces_the_runners_report(tiny_data, multi_task_predictor, all_replies, tmp_path):
    out = tmp_path / "run"
    overrides = {"docvqa": tiny_data.docvqa, "mathvista": tiny_data.mathvista}
    results = run_eval(multi_task_predictor(all_replies), ["docvqa", "mathvista"], out, data_overrides=overrides,
                       show_progress=False)
    for name in ("docvqa", "mathvista"):
        summary, _ = score_predictions(name, out / name / "predictions.jsonl", overrides[name])
        assert summary.pop("n_missing") == 0
        assert summary == results["tasks"][name]


def test_score_errors_are_clear(tiny_data, tmp_path):
    with pytest.raises(SystemExit, match="predictions file not found: .*missing.jsonl"):
        cli.main(["score", "--task", "ai2d", "--data", str(tiny_data.ai2d), "--predictions", str(tmp_path / "missing.jsonl")])
    with pytest.raises(SystemExit, match="unknown task 'ok_vqa'; valid tasks: docvqa, ai2d"):
        cli.main(["score", "--task", "ok_vqa", "--predictions", str(tmp_path / "x.jsonl")])
    stranger = write_jsonl(tmp_path / "p.jsonl", [{"id": "999", "prediction": "1"}])
    with pytest.raises(ValueError, match=r"1 ids not in .*\['999'\]"):
        score_predictions("mathvista", stranger, tiny_data.mathvista)


def test_eval_command_runs_with_a_loaded_predictor(tiny_data, table_predictor, all_replies, tmp_path, monkeypatch, capsys):
    loaded = {}

    def fake_load(model_path, **kwargs):
        loaded.update(model_path=model_path, **kwargs)
        return table_predictor(all_replies["mathvista"])

    monkeypatch.setattr(cli, "load_predictor", fake_load)
    out = tmp_path / "out"
    code = cli.main(["eval", "--model", "ckpt/zaya", "--tasks", "mathvista", "--data", f"mathvista={tiny_data.mathvista}",
                     "--output", str(out), "--batch-size", "4", "--limit", "4", "--max-new-tokens", "mathvista=128",
                     "--no-progress"])
    assert code == 0
    import torch

    device_map = "cuda" if torch.cuda.is_available() else None  # the GPU when there is one, else the CPU
    assert loaded == {"model_path": "ckpt/zaya", "batch_size": 4, "temperature": 0.0, "device_map": device_map}
    results = json.loads((out / "results.json").read_text())
    assert results["tasks"]["mathvista"]["score"] == 75.0  # items 1-3 right, 4 wrong
    assert results["model"] == "ckpt/zaya" and results["config"]["do_sample"] is False
    assert "| mathvista | accuracy | 75.00 | 4 | 0 |" in capsys.readouterr().out


def test_eval_command_argument_errors(tmp_path):
    with pytest.raises(SystemExit, match="--data expects TASK=VALUE"):
        cli.main(["eval", "--model", "m", "--output", str(tmp_path), "--data", "just/a/path"])
    with pytest.raises(SystemExit, match="unknown task 'mmmu'"):
        cli.main(["eval", "--model", "m", "--output", str(tmp_path), "--tasks", "docvqa,mmmu"])


def test_subcommands_mount_on_a_parent_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="zaya-vl")
    subparsers = parser.add_subparsers(dest="command")
    cli.add_eval_args(subparsers)
    cli.add_score_args(subparsers)
    args = parser.parse_args(["eval", "--model", "m", "--output", "o"])
    assert args.func is cli.eval_command and args.tasks == "docvqa,ai2d,mathvista" and args.batch_size == 8
    args = parser.parse_args(["score", "--task", "ai2d", "--predictions", "p.jsonl"])
    assert args.func is cli.score_command and args.data is None
