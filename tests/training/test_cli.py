"""`zaya-vl train CONFIG [--resume] [--set KEY=VALUE]` (the argparse pieces zaya_vl/cli.py mounts)."""

from __future__ import annotations

import argparse
import math

import pytest

import yaml

from zaya_vl.training.cli import add_train_args, main, train_command


def test_parser_mounts_train():
    parser = argparse.ArgumentParser(prog="zaya-vl")
    add_train_args(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "c.yaml"])
    assert args.func is train_command and args.resume is False and args.overrides == []
    assert parser.parse_args(["train", "c.yaml", "--resume"]).resume is True
    args = parser.parse_args(["train", "c.yaml", "--resume", "runs/x/checkpoints/step-00000010",
                              "--set", "train.max_steps=3", "--set", "optim.lr=1e-3"])
    assert args.resume.endswith("step-00000010") and args.overrides == ["train.max_steps=3", "optim.lr=1e-3"]


def test_train_command_runs_and_resumes(helpers, assets, tmp_path, capsys):
    config = helpers.run_config(assets, tmp_path / "run", train={"max_steps": 4, "save_every": 2})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main([str(path), "--set", "train.max_steps=2"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert main([str(path), "--resume"]) == 0  # continues from step 2 to the file's 4
    metrics = helpers.read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    # The schedule follows the extended run: cosine over 4 steps (warmup 1), not the first run's 2.
    assert metrics[2]["lr"] == pytest.approx(3e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert metrics[3]["lr"] == pytest.approx(3e-3 * 0.1)


def test_config_errors_exit_2_with_the_message(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("output_dir: out\nmodel: {path: m}\ndata: {train: d.jsonl, seq_lenn: 5}\n")
    assert main([str(path)]) == 2
    assert "unknown key 'data.seq_lenn' (did you mean 'data.seq_len'?)" in capsys.readouterr().err
