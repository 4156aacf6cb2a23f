"""Resumable, batched evaluation: tasks x predictor -> per-item JSONL -> results.json / results.md.

The model is a `Predictor`: `predict(requests) -> replies`, one reply per request, in order. The
runner owns everything else: which items are left, prompts, images, scoring, files, progress.
Item problems (corrupt image, missing field, an image shape the processor refuses) become error
records and the run goes on; a predictor exception ends the run (a broken model is not an item
problem) and a rerun resumes.

One run per output folder (a lock file; a second live run is refused). `run.json` pins the model,
the config and a fingerprint of each task's data, so a rerun with anything else is refused rather
than reporting old predictions as the new run's.

Several processes (`accelerate launch -m zaya_vl.eval_vl ...`, or `zaya-vl eval --num-processes N`):
each process takes every N-th pending item, writes `predictions.part-<rank>.jsonl`, and the main
process merges the parts into `predictions.jsonl` in data order, the file one process writes. A run
killed before the merge leaves its parts; the next run (any number of processes) merges them first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, Sequence

from PIL import Image
from tqdm.auto import tqdm

from .data import TaskData, load_task_data
from zaya_vl.fileio import OutputLock, OutputLockedError, write_atomic

from .records import RecordWriter, item_record, read_records
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
    processes = Processes.current()
    lock = processes.agree(lambda: OutputLock(output_dir, "zaya-vl eval").acquire(), OutputLockedError)
    try:
        started = time.time()
        loaded = []
        for task in resolved:
            if task.name in caps:
                task = dataclasses.replace(task, max_new_tokens=caps[task.name])
            loaded.append(load_task_data(task, overrides.get(task.name), limit))
        fingerprints = {data.task.name: data.fingerprint for data in loaded}
        processes.agree(lambda: _check_run_identity(output_dir, model_name, config, fingerprints), ValueError)

        summaries, sources = {}, {}
        for data in loaded:
            records = _run_task(predictor, data, output_dir / data.task.name / "predictions.jsonl", batch_size,
                                show_progress, processes)
            summaries[data.task.name], sources[data.task.name] = summarize_task(data.task, records), data.source

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
        if processes.is_main:
            write_results(output_dir, results)
    finally:
        if lock is not None:
            lock.release()  # after results.json: a run waiting for the folder sees a finished one
    return results


def partial_state():
    """accelerate's view of this launch. Without GPUs it must be told the run is on CPU, or each process
    believes it is alone (no gloo group) and every process would evaluate every item."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


@dataclass
class Processes:
    """This process's place among the evaluation's processes (one, unless launched by accelerate/torchrun)."""

    rank: int = 0
    count: int = 1
    state: object = None  # accelerate's PartialState when there are several

    @classmethod
    def current(cls) -> "Processes":
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        state = partial_state()
        return cls(state.process_index, state.num_processes, state)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.count > 1:
            self.state.wait_for_everyone()

    def agree(self, action, refusals: type[Exception] | tuple = ()):
        """Run `action` on the main process only; every process returns its result or raises its refusal (so a
        refused run stops everywhere instead of leaving the other processes waiting)."""
        result, refusal = None, None
        if self.is_main:
            try:
                result = action()
            except refusals as error:
                refusal = error
        if self.count > 1:
            from accelerate.utils import broadcast_object_list

            refusal = broadcast_object_list([None if refusal is None else (type(refusal), str(refusal))])[0]
            if refusal is not None:
                raise refusal[0](refusal[1])
        elif refusal is not None:
            raise refusal
        return result


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


def _run_task(predictor: Predictor, data: TaskData, path: Path, batch_size: int, show_progress: bool,
              processes: Processes | None = None) -> list[dict]:
    processes = processes or Processes()
    task, ids = data.task, item_ids(data)
    if processes.is_main:
        merge_parts(path, ids)  # parts a killed multi-process run left
    processes.barrier()
    done = read_records(path, repair=processes.count == 1)
    pending = [index for index, item_id in enumerate(ids) if item_id not in done]
    mine = pending[processes.rank :: processes.count]
    target = path if processes.count == 1 else path.with_name(f"predictions.part-{processes.rank}.jsonl")
    read_records(target, repair=True)  # cut a partial last line before appending
    desc = task.name if processes.count == 1 else f"{task.name} [{processes.rank}/{processes.count}]"
    progress = tqdm(total=len(ids) - len(pending) + len(mine), initial=len(ids) - len(pending), desc=desc,
                    unit="item", disable=not (show_progress and processes.is_main))
    with RecordWriter(target) as writer, progress:
        for start in range(0, len(mine), batch_size):
            batch = mine[start : start + batch_size]
            records = _evaluate_batch(predictor, data, [(ids[i], data.rows[i]) for i in batch])
            writer.write(records)  # flushed + fsynced: a crash after this loses nothing of the batch
            done.update((record["id"], record) for record in records)
            progress.update(len(batch))
    if processes.count > 1:
        processes.barrier()
        if processes.is_main:
            merge_parts(path, ids)
        processes.barrier()
        done = read_records(path)
    return [done[item_id] for item_id in ids]


def merge_parts(path: Path, ids: list[str]) -> None:
    """Fold `predictions.part-*.jsonl` next to `path` into it (records in data order; ids the data no longer
    has keep their place after them), then delete the parts. Killed between the two steps, the next merge
    finds the same records twice and keeps one: nothing is lost or doubled."""
    parts = sorted(path.parent.glob("predictions.part-*.jsonl")) if path.parent.is_dir() else []
    if not parts:
        return
    records = read_records(path, repair=True)
    for part in parts:
        records.update(read_records(part))  # a partial last line (killed mid-write) is left out: redone
    position = {item_id: index for index, item_id in enumerate(ids)}
    ordered = sorted(records, key=lambda item_id: position.get(item_id, len(ids)))
    write_atomic(path, "".join(json.dumps(records[item_id], ensure_ascii=False) + "\n" for item_id in ordered))
    for part in parts:
        part.unlink()


def _evaluate_batch(predictor: Predictor, data: TaskData, items: list[tuple[str, dict]]) -> list[dict]:
    task = data.task
    records: dict[str, dict] = {}
    requests, requested_items = [], []
    for item_id, item in items:
        try:
            task.check(item, item_id)
            images = task.images(item, data.base_dir, item_id)
            requests.append(Request(task.name, item_id, images, task.build_prompt(item), task.max_new_tokens))
            requested_items.append((item_id, item))
        except Exception as error:  # any bad row becomes a recorded error, never a dead run
            records[item_id] = error_record(task, item_id, item, None, error)
    if requests:
        replies = predictor.predict(requests)
        if len(replies) != len(requests):
            raise RuntimeError(f"predictor returned {len(replies)} replies for {len(requests)} requests")
        for (item_id, item), reply in zip(requested_items, replies):
            records[item_id] = score_item(task, item_id, item, reply)
    return [records[item_id] for item_id, _ in items]  # data order, whichever failed


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


def _check_run_identity(output_dir: Path, model_name: str, config: dict, data: dict[str, str] | None = None) -> None:
    """Refuse to resume an output dir started with another model, config or data (mixed or stale results).

    `data`: task name -> fingerprint of its rows. A task new to the folder is added to `run.json`.
    """
    path = output_dir / "run.json"
    identity = {"model": model_name, "config": config}
    # JSON round trip so tuples/lists and int/float keys compare the way they are stored.
    identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
    data = dict(data or {})
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        pinned = previous.pop("data", {})
        if previous != identity:
            raise ValueError(
                f"{output_dir} holds a run of {previous}; this run is {identity}. "
                "Use another output folder (or delete this one) to start over."
            )
        changed = sorted(name for name in data if name in pinned and pinned[name] != data[name])
        if changed:
            raise ValueError(
                f"{output_dir} holds predictions for other {', '.join(changed)} data than this run's --data "
                f"(fingerprint {pinned[changed[0]][:12]} there, {data[changed[0]][:12]} now); reusing them would "
                "report the old data's score. Use another output folder (or delete this one) to start over."
            )
        if all(name in pinned for name in data):
            return
        data = {**pinned, **data}
    write_atomic(path, json.dumps({**identity, "data": data}, indent=2, sort_keys=True) + "\n")

