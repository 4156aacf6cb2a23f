"""`zaya-vl eval` and `zaya-vl score`: argparse pieces that `zaya_vl/cli.py` mounts.

    parser = argparse.ArgumentParser(prog="zaya-vl"); sub = parser.add_subparsers(dest="command")
    add_eval_args(sub); add_score_args(sub)
    args = parser.parse_args(); sys.exit(args.func(args))
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from zaya_vl.fileio import write_atomic

from .registry import TASKS, parse_task_list
from .report import render_markdown

DEFAULT_TASKS = "docvqa,ai2d,mathvista"


def load_predictor(model_path: str, batch_size: int = 8, temperature: float = 0.0, **kwargs):
    """The model behind `zaya-vl eval`: a ZayaVL checkpoint (native or reference layout) and its processor."""
    from zaya_vl.inference import GenerationSettings, VLAssistant

    return VLAssistant.from_pretrained(model_path, batch_size=batch_size,
                                       settings=GenerationSettings(temperature=temperature), **kwargs)


def _task_values(pairs: list[str] | None, flag: str, convert=str) -> dict:
    """["docvqa=/data/x", ...] -> {"docvqa": "/data/x"}, checking task names."""
    values = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not value:
            raise SystemExit(f"{flag} expects TASK=VALUE, got {pair!r}")
        if name not in TASKS:
            raise SystemExit(f"{flag}: unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
        values[name] = convert(value)
    return values


def add_eval_args(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("eval", help="evaluate a model on DocVQA / AI2D / MathVista (resumable)")
    parser.add_argument("--model", required=True, help="model path or hub id")
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated, from: {', '.join(TASKS)}")
    parser.add_argument("--output", required=True, type=Path, help="output folder; rerun the same command to resume")
    parser.add_argument("--limit", type=int, default=None, help="first N items of each task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--data", action="append", metavar="TASK=PATH", help="local data for a task (repeatable)")
    parser.add_argument("--max-new-tokens", action="append", metavar="TASK=N", help="generation cap for a task")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--num-processes", type=int, default=1, metavar="N",
                        help="split the items over N processes, each on its own GPU (CPU processes without GPUs); "
                             "the same as `accelerate launch --num_processes N -m zaya_vl.eval_vl ...`")
    parser.set_defaults(func=eval_command)
    return parser


def eval_command(args: argparse.Namespace) -> int:
    from .runner import run_eval

    try:
        tasks = parse_task_list(args.tasks)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    data = _task_values(args.data, "--data")
    caps = _task_values(args.max_new_tokens, "--max-new-tokens", int)
    if args.num_processes < 1:
        raise SystemExit(f"--num-processes must be >= 1, got {args.num_processes}")
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.num_processes > 1 and not launched:
        return _launch(args)
    config = {"temperature": args.temperature, "do_sample": args.temperature > 0}
    predictor = load_predictor(args.model, batch_size=args.batch_size, temperature=args.temperature,
                               device_map=_process_device(launched))
    results = run_eval(
        predictor,
        tasks,
        args.output,
        limit=args.limit,
        batch_size=args.batch_size,
        data_overrides=data,
        model_name=args.model,
        config={**config, "max_new_tokens": caps} if caps else config,
        max_new_tokens=caps,
        show_progress=not args.no_progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(render_markdown(results))
    return 0


def _process_device(launched: bool) -> str | None:
    """Where this process's model goes: its own GPU under a multi-process launch, the GPU when there is one,
    else the CPU (None: loaded where it is read)."""
    if launched:
        from .runner import partial_state

        device = partial_state().device
        return None if device.type == "cpu" else str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else None


def _launch(args: argparse.Namespace) -> int:
    """Rerun this command under `accelerate launch` with N processes."""
    argv = ["--model", args.model, "--tasks", args.tasks, "--output", str(args.output),
            "--batch-size", str(args.batch_size), "--temperature", str(args.temperature)]
    if args.limit is not None:
        argv += ["--limit", str(args.limit)]
    for flag, pairs in (("--data", args.data), ("--max-new-tokens", args.max_new_tokens)):
        for pair in pairs or []:
            argv += [flag, pair]
    if args.no_progress:
        argv.append("--no-progress")
    with socket.socket() as probe:  # a free port, so two launches on one machine do not collide
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(args.num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), "-m", "zaya_vl.eval_vl", *argv]
    return subprocess.call(command)


def add_score_args(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("score", help="score an existing predictions JSONL from any model")
    parser.add_argument("--task", required=True, help=f"one of: {', '.join(TASKS)}")
    parser.add_argument("--data", default=None, help="local data (default: the task's hub dataset)")
    parser.add_argument("--predictions", required=True, type=Path, help="JSONL with an id and a prediction per line")
    parser.add_argument("--id-key", default="id")
    parser.add_argument("--prediction-key", default="prediction")
    parser.add_argument("--output", type=Path, default=None, help="write results.json, results.md, scored.jsonl here")
    parser.set_defaults(func=score_command)
    return parser


def score_command(args: argparse.Namespace) -> int:
    from .rescore import score_predictions

    if args.task not in TASKS:
        raise SystemExit(f"unknown task {args.task!r}; valid tasks: {', '.join(TASKS)}")
    if not args.predictions.is_file():
        raise SystemExit(f"predictions file not found: {args.predictions}")
    try:
        summary, records = score_predictions(
            args.task, args.predictions, args.data, id_key=args.id_key, prediction_key=args.prediction_key
        )
    except ValueError as error:
        raise SystemExit(f"zaya-vl score: {error}") from None
    results = {
        "model": str(args.predictions),
        "config": {"scored_from": str(args.predictions)},
        "data": {args.task: args.data or TASKS[args.task].hub_path},
        "tasks": {args.task: summary},
    }
    if args.output:
        # Every file is encoded before the first is written: all three are written, or none.
        files = {
            "results.json": _json_bytes(results, indent=2),
            "results.md": render_markdown(results).encode("utf-8", "backslashreplace"),
            "scored.jsonl": b"".join(_json_bytes(record) for record in records),
        }
        for name, payload in files.items():
            write_atomic(args.output / name, payload)
    print(render_markdown(results).encode("utf-8", "backslashreplace").decode("utf-8"))
    if summary["n_missing"]:
        print(f"note: {summary['n_missing']} items of the data have no prediction and are not scored", file=sys.stderr)
    return 0


def _json_bytes(value, indent: int | None = None) -> bytes:
    """UTF-8 JSON (one line, or indented); text that is not valid Unicode (a lone surrogate a predictions file
    can carry as "\\ud800") is kept as its JSON escape instead of failing to encode."""
    text = json.dumps(value, indent=indent, ensure_ascii=False) + "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(value, indent=indent, ensure_ascii=True) + "\n").encode("ascii")


def main(argv: list[str] | None = None) -> int:
    """``eval`` and ``score`` alone, for ``python -m zaya_vl.eval_vl`` (and ``accelerate launch -m``); ``zaya-vl``
    mounts the same subcommands next to its others."""
    parser = argparse.ArgumentParser(prog="zaya-vl")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_eval_args(subparsers)
    add_score_args(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
