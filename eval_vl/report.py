"""Aggregate per-item records into results.json and results.md.

Scores are reported x100 with 2 decimals (how model cards and lmms-eval's MathVista report them;
lmms-eval's DocVQA/AI2D results.json hold the same means as fractions, kept here as `mean`).
An item recorded with an error scores 0 and stays in `n` -- the denominator is the whole requested
split, so a broken item can never raise a score -- and is counted in `n_errors`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from zaya_vl.fileio import write_atomic

from .task import Task

MAX_LISTED_ERRORS = 20


def percent(fraction: float) -> float:
    return round(100.0 * fraction, 2)


def summarize_task(task: Task, records: list[dict]) -> dict:
    n = len(records)
    mean = sum(r["score"] for r in records) / n if n else 0.0
    extra_names = sorted({name for r in records for name in r.get("extra_scores", {})})
    extra = {
        name: percent(sum(r.get("extra_scores", {}).get(name, 0.0) for r in records) / n) for name in extra_names
    }
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        for key, value in (record.get("breakdown") or {}).items():
            for label in value if isinstance(value, list) else [value]:
                groups[key][str(label)].append(record["score"])
    breakdowns = {
        key: {label: {"score": percent(sum(s) / len(s)), "n": len(s)} for label, s in sorted(by_label.items())}
        for key, by_label in sorted(groups.items())
    }
    errors = [f"{r['id']}: {r['error']}" for r in records if r.get("error")]
    return {
        "metric": task.metric,
        "score": percent(mean),
        "mean": mean,
        "n": n,
        "n_errors": len(errors),
        "errors": errors[:MAX_LISTED_ERRORS],
        "extra_scores": extra,
        "breakdowns": breakdowns,
    }


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(results: dict) -> str:
    lines = ["# zaya-vl evaluation", ""]
    lines.append(f"- model: `{results.get('model')}`")
    lines.append(f"- config: `{json.dumps(results.get('config'), sort_keys=True)}`")
    timing = results.get("timing") or {}
    if timing:
        lines.append(f"- finished: {timing.get('finished')} ({timing.get('elapsed_s')} s in this invocation)")
    lines += ["", "| task | metric | score | n | errors | other scores | data |", "|---|---|---:|---:|---:|---|---|"]
    for name, summary in results["tasks"].items():
        other = ", ".join(f"{k} {v:.2f}" for k, v in summary["extra_scores"].items())
        source = (results.get("data") or {}).get(name, "")
        lines.append(
            f"| {name} | {summary['metric']} | {summary['score']:.2f} | {summary['n']} | {summary['n_errors']} "
            f"| {other} | {_cell(source)} |"
        )
    for name, summary in results["tasks"].items():
        for key, by_label in summary["breakdowns"].items():
            lines += ["", f"## {name} by {key}", "", f"| {key} | score | n |", "|---|---:|---:|"]
            lines += [f"| {_cell(label)} | {cell['score']:.2f} | {cell['n']} |" for label, cell in by_label.items()]
        if summary["errors"]:
            lines += ["", f"## {name}: items with errors (first {MAX_LISTED_ERRORS})", ""]
            lines += [f"- {_cell(error)}" for error in summary["errors"]]
    return "\n".join(lines) + "\n"


def write_results(output_dir: Path, results: dict) -> None:
    write_atomic(Path(output_dir) / "results.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    write_atomic(Path(output_dir) / "results.md", render_markdown(results))
