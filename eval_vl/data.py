"""Loading a task's rows: from the hub by name, or from local files in the same schema."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .registry import get_task
from .task import Task

_JSON_SUFFIXES = (".jsonl", ".json")
_PARQUET_SUFFIXES = (".parquet",)


@dataclass
class TaskData:
    """A task's rows plus where relative image paths in them are resolved from."""

    task: Task
    rows: Any  # datasets.Dataset, image columns left undecoded
    base_dir: Path | None
    source: str
    fingerprint: str = ""  # of every row of the split, before `limit`: what a resumed run must be scoring

    def __len__(self) -> int:
        return len(self.rows)


def load_task_data(task: str | Task, data: str | Path | None = None, limit: int | None = None) -> TaskData:
    """Rows of `task`'s evaluation split.

    data=None: `datasets.load_dataset(hub name, config, split=...)` (needs the network or the cache).
    A path: a `save_to_disk` folder (Dataset or DatasetDict; the task's split is taken), a folder of
    .parquet / .jsonl files, or one .parquet / .jsonl / .json file. `limit` keeps the first N rows.
    Image columns are left undecoded ({"bytes", "path"}) so one corrupt image is an error for its
    item when the runner decodes it, not an exception while iterating the dataset.
    """
    import datasets  # imported here: `import zaya_vl.eval_vl` stays cheap

    task = get_task(task)
    if data is None:
        rows = datasets.load_dataset(task.hub_path, task.hub_config, split=task.split)
        config = f" config {task.hub_config}" if task.hub_config else ""
        base_dir, source = None, f"{task.hub_path}{config} split {task.split}"
    else:
        path = Path(data)
        rows = _load_local(path, task.split)
        base_dir, source = (path if path.is_dir() else path.parent), str(path)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    for column, feature in rows.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            rows = rows.cast_column(column, datasets.Image(decode=False))
    fingerprint = fingerprint_rows(rows)
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    return TaskData(task=task, rows=rows, base_dir=base_dir, source=source, fingerprint=fingerprint)


def fingerprint_rows(rows) -> str:
    """sha256 over every row's values, image bytes included (hashed, not decoded). Taken over the whole split
    so that `--limit 10` then `--limit 100` into one folder is still the same data; another data file, or the
    same file edited, is not. An image given as a path is identified by that path (its file is not read here)."""
    digest = hashlib.sha256(f"{len(rows)}|{sorted(rows.column_names)}".encode())
    for batch in rows.iter(batch_size=256):
        digest.update(json.dumps(batch, sort_keys=True, default=_blob_digest, ensure_ascii=False).encode("utf-8",
                                                                                                        "surrogatepass"))
    return digest.hexdigest()


def _blob_digest(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "sha256:" + hashlib.sha256(value).hexdigest()
    return repr(value)


def _load_local(path: Path, split: str):
    import datasets

    if not path.exists():
        raise FileNotFoundError(f"data not found: {path}")
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split in loaded:
                    return loaded[split]
                if len(loaded) == 1:
                    return next(iter(loaded.values()))
                raise ValueError(f"{path} has splits {list(loaded)}, none named {split!r}")
            return loaded
        files = sorted(p for p in path.iterdir() if p.suffix in _PARQUET_SUFFIXES + _JSON_SUFFIXES)
        if not files:
            raise ValueError(f"{path}: no saved dataset, .parquet or .jsonl files in this folder")
        suffixes = {p.suffix in _PARQUET_SUFFIXES for p in files}
        if len(suffixes) > 1:
            raise ValueError(f"{path}: mixes parquet and json files; keep one format per folder")
        return _load_files([str(p) for p in files], "parquet" if files[0].suffix in _PARQUET_SUFFIXES else "json")
    if path.suffix in _PARQUET_SUFFIXES:
        return _load_files([str(path)], "parquet")
    if path.suffix in _JSON_SUFFIXES:
        return _load_files([str(path)], "json")
    raise ValueError(f"{path}: expected a saved dataset folder, a folder of files, or a .parquet/.jsonl/.json file")


def _load_files(files: list[str], builder: str):
    import datasets

    return datasets.load_dataset(builder, data_files=files, split="train")
