"""run_eval end to end on the tiny datasets: scores by hand, errors recorded, resume after a crash."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from zaya_vl.eval_vl import run_eval
from zaya_vl.eval_vl.records import read_records

TASK_NAMES = ["docvqa", "ai2d", "mathvista"]


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def full_run(tiny_data, multi_task_predictor, all_replies, tmp_path):
    predictor = multi_task_predictor(all_replies)
    results = run_eval(predictor, TASK_NAMES, tmp_path / "run", batch_size=2, data_overrides=tiny_data.overrides(),
                       model_name="table", config={"temperature": 0.0}, show_progress=False)
    return results, predictor, tmp_path / "run"


def test_scores_by_hand(full_run):
    results, _, _ = full_run
    docvqa, ai2d, mathvista = (results["tasks"][name] for name in TASK_NAMES)
    # DocVQA: (1 + 2/3 + 0 + 0 [corrupt image] + 0 [no answers]) / 5
    assert docvqa["score"] == pytest.approx(33.33)
    assert docvqa["mean"] == pytest.approx((1 + 2 / 3) / 5)
    assert (docvqa["n"], docvqa["n_errors"], docvqa["metric"]) == (5, 2, "anls")
    assert docvqa["breakdowns"]["question_types"]["form"] == {"score": 50.0, "n": 2}
    assert docvqa["breakdowns"]["question_types"]["table/list"] == {"score": pytest.approx(66.67), "n": 1}
    # AI2D exact: only "B" -> 1/5; lenient: "B", "The answer is A", "5" -> 3/5
    assert (ai2d["score"], ai2d["extra_scores"], ai2d["n"], ai2d["n_errors"]) == (20.0, {"lenient": 60.0}, 5, 2)
    # MathVista: items 1, 2, 3 right out of 6
    assert (mathvista["score"], mathvista["n"], mathvista["n_errors"]) == (50.0, 6, 0)
    assert mathvista["breakdowns"]["answer_type"] == {
        "float": {"score": 50.0, "n": 2}, "integer": {"score": 100.0, "n": 1},
        "list": {"score": 0.0, "n": 1}, "text": {"score": 50.0, "n": 2},
    }
    assert mathvista["breakdowns"]["question_type"]["multi_choice"] == {"score": 50.0, "n": 2}
    assert mathvista["breakdowns"]["skills"]["arithmetic reasoning"] == {"score": 50.0, "n": 2}
    assert mathvista["breakdowns"]["task"]["figure question answering"] == {"score": 0.0, "n": 2}


def test_errors_are_recorded_with_id_and_never_reach_the_model(full_run):
    _, predictor, out = full_run
    docvqa = {r["id"]: r for r in read_lines(out / "docvqa" / "predictions.jsonl")}
    assert docvqa["104"]["error"].startswith("item 104: cannot decode image in 'image'")
    assert docvqa["105"]["error"] == "item 105: missing field 'answers'"
    assert docvqa["104"]["score"] == 0.0 and docvqa["104"]["prediction"] is None
    ai2d = {r["id"]: r for r in read_lines(out / "ai2d" / "predictions.jsonl")}
    assert "item 3: cannot decode image" in ai2d["3"]["error"]
    assert ai2d["4"]["error"] == "item 4: missing field 'answer'"
    asked = {(r.task, r.item_id) for batch in predictor.batches for r in batch}
    assert not asked & {("docvqa", "104"), ("docvqa", "105"), ("ai2d", "3"), ("ai2d", "4")}
    # batch 2 over 5 DocVQA items: [101, 102], [103] (104 dropped), [] (105 dropped: no model call)
    assert [[r.item_id for r in b] for b in predictor.batches if b[0].task == "docvqa"] == [["101", "102"], ["103"]]


def test_requests_carry_prompt_images_and_caps(full_run):
    _, predictor, _ = full_run
    request = predictor.batches[0][0]
    assert (request.task, request.item_id, request.max_new_tokens) == ("docvqa", "101", 32)
    assert request.prompt == "<image>What is the date?\nAnswer the question using a single word or phrase."
    assert len(request.images) == 1 and request.images[0].mode == "RGB"
    assert {r.max_new_tokens for b in predictor.batches for r in b if r.task == "mathvista"} == {2048}


def test_one_line_per_item_and_report_files(full_run):
    results, _, out = full_run
    for name, n in zip(TASK_NAMES, (5, 5, 6)):
        lines = read_lines(out / name / "predictions.jsonl")
        assert len(lines) == n and len({line["id"] for line in lines}) == n
        assert set(lines[0]) == {"id", "prediction", "score", "extra_scores", "breakdown", "error"}
    assert json.loads((out / "results.json").read_text()) == results
    markdown = (out / "results.md").read_text()
    assert "| docvqa | anls | 33.33 | 5 | 2 | " in markdown
    assert "| ai2d | exact_match | 20.00 | 5 | 2 | lenient 60.00 |" in markdown
    assert "| mathvista | accuracy | 50.00 | 6 | 0 |" in markdown
    assert "## mathvista by skills" in markdown and "- 104: item 104: cannot decode image" in markdown
    assert results["model"] == "table" and results["config"] == {"temperature": 0.0}
    assert results["timing"]["elapsed_s"] >= 0
    assert not [p for p in out.rglob("*.tmp")]  # atomic writes leave no temp files


def test_progress_bar_shows_items_per_second(tiny_data, table_predictor, tmp_path, capsys):
    run_eval(table_predictor({}), ["mathvista"], tmp_path, data_overrides={"mathvista": tiny_data.mathvista})
    assert "item/s" in capsys.readouterr().err


def test_crash_then_resume_skips_finished_items(tiny_data, multi_task_predictor, all_replies, full_run, tmp_path):
    clean_results, _, _ = full_run
    out = tmp_path / "crashed"
    crashing = multi_task_predictor(all_replies, crash_after_batches=3)  # dies inside the AI2D task
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_eval(crashing, TASK_NAMES, out, batch_size=2, data_overrides=tiny_data.overrides(),
                 model_name="table", config={"temperature": 0.0}, show_progress=False)
    finished_before = {name: set(read_records(out / name / "predictions.jsonl")) for name in TASK_NAMES}
    assert finished_before["docvqa"] == {"101", "102", "103", "104", "105"}
    assert finished_before["ai2d"] == {"0", "1"}  # the third batch call is the one that crashed
    assert finished_before["mathvista"] == set()
    assert not (out / "results.json").exists()

    resumed = multi_task_predictor(all_replies)
    results = run_eval(resumed, TASK_NAMES, out, batch_size=2, data_overrides=tiny_data.overrides(),
                       model_name="table", config={"temperature": 0.0}, show_progress=False)
    asked = [(r.task, r.item_id) for b in resumed.batches for r in b]
    assert asked == [("ai2d", "2")] + [("mathvista", str(pid)) for pid in range(1, 7)]
    assert results["tasks"] == clean_results["tasks"]
    for name in TASK_NAMES:
        lines = read_lines(out / name / "predictions.jsonl")
        assert len(lines) == len({line["id"] for line in lines})


def test_truncated_last_line_is_cut_and_redone(tiny_data, table_predictor, tmp_path):
    out = tmp_path / "run"
    first = table_predictor({"1": "1.2", "2": "1000"})
    run_eval(first, ["mathvista"], out, limit=2, data_overrides={"mathvista": tiny_data.mathvista}, show_progress=False)
    path = out / "mathvista" / "predictions.jsonl"
    with open(path, "a") as handle:
        handle.write('{"id": "3", "prediction": "C", "sco')  # a write cut short by a kill
    second = table_predictor({"3": "C"})
    results = run_eval(second, ["mathvista"], out, limit=3, data_overrides={"mathvista": tiny_data.mathvista},
                       show_progress=False)
    assert second.requested_ids == ["3"]
    lines = read_lines(path)  # every line parses again
    assert [line["id"] for line in lines] == ["1", "2", "3"]
    assert results["tasks"]["mathvista"]["score"] == 100.0


def test_corrupt_middle_line_is_an_error(tiny_data, table_predictor, tmp_path):
    path = tmp_path / "mathvista" / "predictions.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text('{"id": "1", "score": 1}\nnot json\n{"id": "2", "score": 1}\n')
    with pytest.raises(ValueError, match=r"predictions.jsonl:2"):
        run_eval(table_predictor({}), ["mathvista"], tmp_path, data_overrides={"mathvista": tiny_data.mathvista})


def test_growing_the_limit_only_runs_new_items(tiny_data, table_predictor, tmp_path):
    run_eval(table_predictor({}), ["mathvista"], tmp_path, limit=2, data_overrides={"mathvista": tiny_data.mathvista},
             show_progress=False)
    more = table_predictor({})
    results = run_eval(more, ["mathvista"], tmp_path, limit=4, data_overrides={"mathvista": tiny_data.mathvista},
                       show_progress=False)
    assert more.requested_ids == ["3", "4"] and results["tasks"]["mathvista"]["n"] == 4


def test_resume_refuses_another_model_or_config(tiny_data, table_predictor, tmp_path):
    kwargs = dict(data_overrides={"mathvista": tiny_data.mathvista}, limit=1, show_progress=False)
    run_eval(table_predictor({}), ["mathvista"], tmp_path, model_name="a", config={"temperature": 0.0}, **kwargs)
    with pytest.raises(ValueError, match="holds a run of"):
        run_eval(table_predictor({}), ["mathvista"], tmp_path, model_name="a", config={"temperature": 0.7}, **kwargs)
    with pytest.raises(ValueError, match="holds a run of"):
        run_eval(table_predictor({}), ["mathvista"], tmp_path, model_name="b", config={"temperature": 0.0}, **kwargs)


def test_bad_arguments(tiny_data, table_predictor, tmp_path):
    with pytest.raises(ValueError, match="unknown task 'vqav2'; valid tasks: docvqa, ai2d"):
        run_eval(table_predictor({}), ["vqav2"], tmp_path)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        run_eval(table_predictor({}), ["ai2d"], tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="not being run"):
        run_eval(table_predictor({}), ["ai2d"], tmp_path, data_overrides={"docvqa": tiny_data.docvqa})


def test_max_new_tokens_override(tiny_data, table_predictor, tmp_path):
    predictor = table_predictor({})
    run_eval(predictor, ["mathvista"], tmp_path, limit=1, data_overrides={"mathvista": tiny_data.mathvista},
             max_new_tokens={"mathvista": 64}, show_progress=False)
    assert predictor.batches[0][0].max_new_tokens == 64


CHILD = textwrap.dedent(
    """
    import json, sys, time
    from zaya_vl.eval_vl import run_eval

    class SlowTable:
        def __init__(self, replies):
            self.replies = replies
        def predict(self, requests):
            time.sleep(0.3)
            return [self.replies.get(r.item_id, "") for r in requests]

    data, out, replies = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    run_eval(SlowTable(replies), ["mathvista"], out, batch_size=1, data_overrides={"mathvista": data},
             model_name="table", config={"temperature": 0.0}, show_progress=False)
    """
)


def test_sigkill_half_way_then_rerun_gives_the_same_report(tiny_data, table_predictor, all_replies, tmp_path):
    replies = all_replies["mathvista"]
    out = tmp_path / "killed"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(script), str(tiny_data.mathvista), str(out), json.dumps(replies)])
    path = out / "mathvista" / "predictions.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and child.poll() is None:
        if path.exists() and path.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    assert child.poll() is None, "the child finished before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    finished = read_records(path)
    assert 2 <= len(finished) < 6

    rerun = table_predictor(replies)
    results = run_eval(rerun, ["mathvista"], out, batch_size=1, data_overrides={"mathvista": tiny_data.mathvista},
                       model_name="table", config={"temperature": 0.0}, show_progress=False)
    assert set(rerun.requested_ids).isdisjoint(finished)
    assert sorted(rerun.requested_ids + list(finished), key=int) == [str(pid) for pid in range(1, 7)]

    clean = run_eval(table_predictor(replies), ["mathvista"], tmp_path / "clean", batch_size=1,
                     data_overrides={"mathvista": tiny_data.mathvista}, model_name="table",
                     config={"temperature": 0.0}, show_progress=False)
    assert results["tasks"] == clean["tasks"]
    assert results["tasks"]["mathvista"]["score"] == 50.0
