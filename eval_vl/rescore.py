"""Score an existing predictions JSONL (from our runner or any other tool) against a task's data."""

from __future__ import annotations

from pathlib import Path

from .data import load_task_data
import json

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
    lines = read_predictions(path, id_key=id_key, prediction_key=prediction_key)
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


def read_predictions(path: Path, *, id_key: str = "id", prediction_key: str = "prediction") -> dict[str, dict]:
    """Lines of a predictions JSONL by id, each checked: a JSON object with `id_key` and `prediction_key` (or a
    non-null "error"), ids unique, text UTF-8. Every problem is a ValueError naming the file and the line, since
    a file scored under the wrong key or format would otherwise score 0 and look like a result. The last line
    needs no newline."""
    raw = path.read_bytes()
    if not raw.strip():
        raise ValueError(f"{path}: empty file, no predictions to score")
    if raw.lstrip().startswith(b"["):
        raise ValueError(f"{path}: a JSON array; score reads JSON Lines, one object per line "
                         f"({{\"{id_key}\": ..., \"{prediction_key}\": ...}})")
    lines: dict[str, dict] = {}
    first_line: dict[str, int] = {}
    for number, data in enumerate(raw.split(b"\n"), start=1):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}:{number}: not UTF-8 text (byte {data[error.start]:#04x} at column "
                             f"{error.start + 1})") from None
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: a JSON {type(record).__name__}, expected an object with "
                             f"{id_key!r} and {prediction_key!r}")
        if id_key not in record or record[id_key] is None:
            raise ValueError(f"{path}:{number}: no {id_key!r} key (keys: {sorted(record)}); pass --id-key")
        if prediction_key not in record and not record.get("error"):
            raise ValueError(f"{path}:{number}: no {prediction_key!r} key (keys: {sorted(record)}); pass "
                             "--prediction-key")
        reply = record.get(prediction_key)
        if isinstance(reply, (int, float)) and not isinstance(reply, bool):
            record[prediction_key] = str(reply)
        elif reply is not None and not isinstance(reply, str):
            raise ValueError(f"{path}:{number}: {prediction_key!r} is a {type(reply).__name__}, expected text")
        item_id = str(record[id_key])
        if item_id in lines:
            raise ValueError(f"{path}:{number}: duplicate id {item_id!r} (first on line {first_line[item_id]}); "
                             "which prediction counts would be a guess")
        lines[item_id], first_line[item_id] = record, number
    if not lines:
        raise ValueError(f"{path}: no predictions to score")
    return lines
