"""Score an existing predictions JSONL (from our runner or any other tool) against a task's data."""

from __future__ import annotations

from pathlib import Path

from .data import load_task_data
from .records import read_records
from .registry import get_task
from .report import summarize_task
from .runner import error_record, item_ids, score_item
from .task import ItemError, Task


def score_predictions(
    task: str | Task,
    predictions: str | Path,
    data: str | Path | None = None,
    *,
    id_key: str = "id",
    prediction_key: str = "prediction",
) -> tuple[dict, list[dict]]:
    """(summary, per-item records) for the items that have a prediction.

    Each line needs `id_key` (our ids: DocVQA questionId, MathVista pid, AI2D row index) and
    `prediction_key`. A line with a non-null "error" (our runner's failed items) stays an error
    scoring 0. Items of the data without a line are left out and counted in `n_missing`; an id the
    data does not have is an error (wrong data or wrong id key).
    """
    task = get_task(task)
    path = Path(predictions)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    lines = read_records(path, id_key=id_key)
    task_data = load_task_data(task, data)
    ids = item_ids(task_data)
    unknown = sorted(set(lines) - set(ids))
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} ids not in {task_data.source}, e.g. {unknown[:5]}")
    records = []
    for index, item_id in enumerate(ids):
        if item_id not in lines:
            continue
        line, item = lines[item_id], task_data.rows[index]
        reply = line.get(prediction_key)
        if line.get("error"):
            records.append(error_record(task, item_id, item, None, ItemError(line["error"])))
            continue
        try:
            task.check(item, item_id)
        except Exception as error:
            records.append(error_record(task, item_id, item, reply, error))
            continue
        records.append(score_item(task, item_id, item, reply))
    summary = summarize_task(task, records)
    summary["n_missing"] = len(ids) - len(records)
    return summary, records
