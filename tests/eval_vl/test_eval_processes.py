"""`zaya-vl eval --num-processes 2` (accelerate launch, two CPU processes, gloo) equals one process, and resumes
what a killed multi-process run left: its finished lines and its per-process part files."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from zaya_vl.data.synthetic import generate_dataset
from zaya_vl.eval_vl import cli
from zaya_vl.testing import tiny_vl_checkpoint


def _args(model, data, output, *extra):
    return ["eval", "--model", str(model), "--tasks", "docvqa,ai2d", "--output", str(output), "--batch-size", "2",
            "--data", f"docvqa={data / 'docvqa.jsonl'}", "--data", f"ai2d={data / 'ai2d.jsonl'}",
            "--max-new-tokens", "docvqa=4", "--max-new-tokens", "ai2d=2", "--no-progress", *extra]


def test_two_processes_equal_one_and_resume_a_killed_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stray accelerate config
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    model, synth = tmp_path / "model", tmp_path / "synth"
    tiny_vl_checkpoint(model, seed=0)
    generate_dataset(synth, n_train_docs=0, n_test_docs=5, seed=3, image_size=160)
    data = synth / "eval"

    one = tmp_path / "one"
    assert cli.main(_args(model, data, one)) == 0

    # What a 2-process run killed mid-way leaves: the first DocVQA lines merged, rank 1's part file with a few
    # more lines and a partial last one, rank 0's part file empty; AI2D not started.
    killed = tmp_path / "killed"
    (killed / "docvqa").mkdir(parents=True)
    shutil.copy(one / "run.json", killed / "run.json")
    lines = (one / "docvqa" / "predictions.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) >= 8
    (killed / "docvqa" / "predictions.jsonl").write_text("".join(lines[:3]))
    (killed / "docvqa" / "predictions.part-1.jsonl").write_text(lines[4] + lines[6] + lines[8][: len(lines[8]) // 2])
    (killed / "docvqa" / "predictions.part-0.jsonl").write_text("")

    assert cli.main(_args(model, data, killed, "--num-processes", "2")) == 0
    # DocVQA: resumed from the merged lines and the part file; AI2D had not started, so its file is a fresh
    # 2-process run. Both equal the 1-process files byte for byte.
    for task in ("docvqa", "ai2d"):
        assert (killed / task / "predictions.jsonl").read_bytes() == (one / task / "predictions.jsonl").read_bytes()
        assert sorted(p.name for p in (killed / task).iterdir()) == ["predictions.jsonl"]  # parts merged away
    assert json.loads((killed / "results.json").read_text())["tasks"] == json.loads((one / "results.json").read_text())["tasks"]
    assert not (killed / ".zaya-vl.lock").exists()

