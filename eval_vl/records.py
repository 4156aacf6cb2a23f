"""The per-item predictions file (JSONL, appended and fsynced); final files are written with
``zaya_vl.fileio.write_atomic``.

One line per finished item: {"id", "prediction", "score", "extra_scores", "breakdown", "error"}.
A crash can leave at most a partial last line; resuming cuts it off and redoes that item.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

__all__ = ["RecordWriter", "item_record", "read_records"]


def item_record(
    item_id: str,
    prediction: str | None,
    score: float,
    *,
    extra_scores: dict[str, float] | None = None,
    breakdown: dict | None = None,
    error: str | None = None,
) -> dict:
    return {
        "id": item_id,
        "prediction": prediction,
        "score": float(score),
        "extra_scores": dict(extra_scores or {}),
        "breakdown": dict(breakdown or {}),
        "error": error,
    }


def read_records(path: Path, *, repair: bool = False, id_key: str = "id") -> dict[str, dict]:
    """Records by id from a JSONL predictions file (missing file -> {}).

    A last line without its newline is a write cut short by a crash: it is ignored, and with
    `repair=True` cut from the file so appends start on a clean line. A bad line elsewhere is
    corruption we cannot guess around: ValueError with its line number.
    """
    path = Path(path)
    if not path.exists():
        return {}
    raw = path.read_bytes()
    complete_end = raw.rfind(b"\n") + 1  # bytes up to and including the last newline
    if complete_end < len(raw) and repair:
        with open(path, "r+b") as handle:
            handle.truncate(complete_end)
            handle.flush()
            os.fsync(handle.fileno())
    records: dict[str, dict] = {}
    for number, line in enumerate(raw[:complete_end].decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            item_id = str(record[id_key])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not a prediction record with {id_key!r} ({error})") from None
        records[item_id] = record  # a later line for the same id wins
    return records


class RecordWriter:
    """Appends records; each `write` call is flushed and fsynced before it returns."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a", encoding="utf-8")

    def write(self, records: Iterable[dict]) -> None:
        lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        if lines:
            self._handle.write(lines)
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
