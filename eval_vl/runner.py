"""Resumable, batched evaluation: tasks x predictor -> per-item JSONL -> results.json / results.md.

The model is a `Predictor`: `predict(requests) -> replies`, one reply per request, in order. The
runner owns everything else: which items are left, prompts, images, scoring, files, progress.
Item problems (corrupt image, missing field) become error records and the run goes on; a
predictor exception ends the run (a broken model is not an item problem) and a rerun resumes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, Sequence

from PIL import Image
from tqdm.auto import tqdm

from .data import TaskData, load_task_data
from .records import RecordWriter, item_record, read_records, write_atomic
from .registry import get_task
from .report import summarize_task, write_results
from .task import ItemError, Task


@dataclass
class Request:
    """One generation the predictor must run: images in prompt order, greedy unless configured."""

    task: str
    item_id: str
    images: list[Image.Image]
    prompt: str
    max_new_tokens: int


class Predictor(Protocol):
    def predict(self, requests: list[Request]) -> list[str]: ...


def run_eval(
    predictor: Predictor,
    tasks: Sequence[str | Task] | str,
    output_dir: str | Path,
    limit: int | None = None,
    batch_size: int = 8,
    data_overrides: dict[str, str | Path] | None = None,
    model_name: str = "unknown",
    config: dict | None = None,
    max_new_tokens: dict[str, int] | None = None,
    show_progress: bool = True,
) -> dict:
    """Run (or resume) `tasks` into `output_dir`; returns the results dict also written there.

    `data_overrides`: task name -> local data path (else the hub dataset). `max_new_tokens`: task
    name -> cap overriding the task default. `config` is recorded in the report and must match
    the one a resumed output dir was started with.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    output_dir = Path(output_dir)
    resolved = [get_task(t) for t in (tasks.split(",") if isinstance(tasks, str) else tasks)]
    overrides, caps = dict(data_overrides or {}), dict(max_new_tokens or {})
    unknown = (set(overrides) | set(caps)) - {t.name for t in resolved}
    if unknown:
        raise ValueError(f"overrides given for tasks not being run: {sorted(unknown)}")
    config = dict(config or {})
    _check_run_identity(output_dir, model_name, config)
    started = time.time()

    summaries, sources = {}, {}
    for task in resolved:
        if task.name in caps:
            task = dataclasses.replace(task, max_new_tokens=caps[task.name])
        data = load_task_data(task, overrides.get(task.name), limit)
        records = _run_task(predictor, data, output_dir / task.name / "predictions.jsonl", batch_size, show_progress)
        summaries[task.name], sources[task.name] = summarize_task(task, records), data.source

    finished = time.time()
    results = {
        "model": model_name,
        "config": config,
        "limit": limit,
        "batch_size": batch_size,
        "data": sources,
        "tasks": summaries,
        "timing": {
            "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
            "finished": datetime.fromtimestamp(finished, timezone.utc).isoformat(timespec="seconds"),
            "elapsed_s": round(finished - started, 3),
        },
    }
    write_results(output_dir, results)
    return results


def item_ids(data: TaskData) -> list[str]:
    """Ids in row order, read from the id column only (never touching image bytes)."""
    task, rows = data.task, data.rows
    if task.id_field and task.id_field in rows.column_names:
        column = list(rows[task.id_field])
        ids = [str(index) if value is None else str(value) for index, value in enumerate(column)]
    else:
        ids = [str(index) for index in range(len(rows))]
    duplicates = [item_id for item_id, count in Counter(ids).items() if count > 1]
    if duplicates:
        raise ValueError(f"{data.source}: duplicate item ids, resume needs unique ones: {duplicates[:5]}")
    return ids


def _run_task(predictor: Predictor, data: TaskData, path: Path, batch_size: int, show_progress: bool) -> list[dict]:
    task, ids = data.task, item_ids(data)
    done = read_records(path, repair=True)
    pending = [index for index, item_id in enumerate(ids) if item_id not in done]
    progress = tqdm(total=len(ids), initial=len(ids) - len(pending), desc=task.name, unit="item", disable=not show_progress)
    with RecordWriter(path) as writer, progress:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            records = _evaluate_batch(predictor, data, [(ids[i], data.rows[i]) for i in batch])
            writer.write(records)  # flushed + fsynced: a crash after this loses nothing of the batch
            done.update((record["id"], record) for record in records)
            progress.update(len(batch))
    return [done[item_id] for item_id in ids]


def _evaluate_batch(predictor: Predictor, data: TaskData, items: list[tuple[str, dict]]) -> list[dict]:
    task = data.task
    records: list[dict] = []
    requests, requested_items = [], []
    for item_id, item in items:
        try:
            task.check(item, item_id)
            images = task.images(item, data.base_dir, item_id)
            requests.append(Request(task.name, item_id, images, task.build_prompt(item), task.max_new_tokens))
            requested_items.append((item_id, item))
        except Exception as error:  # any bad row becomes a recorded error, never a dead run
            records.append(error_record(task, item_id, item, None, error))
    if requests:
        replies = predictor.predict(requests)
        if len(replies) != len(requests):
            raise RuntimeError(f"predictor returned {len(replies)} replies for {len(requests)} requests")
        records += [score_item(task, item_id, item, reply) for (item_id, item), reply in zip(requested_items, replies)]
    return records


def score_item(task: Task, item_id: str, item: dict, reply: str | None) -> dict:
    """The record for one reply; a row that breaks scoring becomes an error record."""
    try:
        return item_record(
            item_id,
            reply,
            task.score(item, reply),
            extra_scores=task.extra_scores(item, reply),
            breakdown=task.breakdown_keys(item),
        )
    except Exception as error:
        return error_record(task, item_id, item, reply, error, stage="scoring")


def error_record(task: Task, item_id: str, item: dict, reply: str | None, error: Exception, stage: str = "") -> dict:
    message = str(error) if isinstance(error, ItemError) else f"item {item_id}: {type(error).__name__}: {error}"
    if stage:
        message = f"{stage} failed: {message}"
    try:
        breakdown = task.breakdown_keys(item)
    except Exception:
        breakdown = {}
    return item_record(item_id, reply, 0.0, breakdown=breakdown, error=message)


def _check_run_identity(output_dir: Path, model_name: str, config: dict) -> None:
    """Refuse to resume an output dir started with another model or config (mixed results)."""
    path = output_dir / "run.json"
    identity = {"model": model_name, "config": config}
    # JSON round trip so tuples/lists and int/float keys compare the way they are stored.
    identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != identity:
            raise ValueError(
                f"{output_dir} holds a run of {previous}; this run is {identity}. "
                "Use another output folder (or delete this one) to start over."
            )
        return
    write_atomic(path, json.dumps(identity, indent=2, sort_keys=True) + "\n")

