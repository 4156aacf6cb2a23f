"""Atomic checkpoints and resume.

A checkpoint is ``<output_dir>/checkpoints/step-00000120/``, holding what ``accelerate`` saves (model,
optimizer, scheduler, every process's RNG states; sharded under FSDP / DeepSpeed), ``trainer_state.json``
(step, data position, counters), ``balancing.pt`` (the controller's state) and, last, ``COMPLETE``.

Writing: everything goes to ``.tmp-step-00000120/``; the main process fsyncs the files, writes ``COMPLETE``
(listing every file and its size), fsyncs it, renames the folder to ``step-00000120`` (atomic on POSIX) and
fsyncs the parent. A run killed at any point — SIGKILL included — leaves either no ``step-*`` folder for that
step or a complete one; a ``.tmp-*`` leftover is never resumed from and is removed by the next save.
Old checkpoints are dropped by renaming them to ``.trash-*`` first, so a half-deleted one never looks
complete either. :func:`is_complete` also re-checks the listed files and sizes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from zaya_vl.fileio import fsync_dir, write_atomic

COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def is_complete(path: str | Path) -> bool:
    """A folder is a complete checkpoint iff its name is ``step-N``, ``COMPLETE`` parses, and every file it
    lists exists with the listed size."""
    path = Path(path)
    if not CHECKPOINT_PATTERN.match(path.name) or not (path / COMPLETE).is_file():
        return False
    try:
        manifest = json.loads((path / COMPLETE).read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError, OSError):
        return False
    for relative, size in files.items():
        file = path / relative
        if not file.is_file() or file.stat().st_size != size:
            return False
    return True


def complete_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and child.is_dir() and is_complete(child):
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


def read_trainer_state(path: str | Path) -> dict:
    return json.loads((Path(path) / TRAINER_STATE).read_text())


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_json_atomic(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2))


def finalize(temporary: Path, final: Path, step: int) -> Path:
    """Main process only: fsync the written files, write ``COMPLETE``, rename ``temporary`` → ``final``."""
    files = {}
    for file in sorted(p for p in temporary.rglob("*") if p.is_file()):
        _fsync_file(file)
        files[str(file.relative_to(temporary))] = file.stat().st_size
    for folder in sorted({p.parent for p in temporary.rglob("*")} | {temporary}):
        fsync_dir(folder)
    marker = temporary / COMPLETE
    with open(marker, "w") as handle:
        json.dump({"step": step, "files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    fsync_dir(temporary)
    if final.exists():
        _discard(final)
    os.rename(temporary, final)
    fsync_dir(final.parent)
    return final


def _discard(path: Path) -> None:
    """Remove a checkpoint so that no intermediate state looks complete: rename first, then delete."""
    trash = path.with_name(f".trash-{path.name}")
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    os.rename(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def clean_leftovers(root: Path) -> None:
    """Remove ``.tmp-*`` / ``.trash-*`` folders a killed run left behind (main process, before saving)."""
    if not root.is_dir():
        return
    for child in root.iterdir():
        if child.name.startswith((".tmp-", ".trash-")):
            shutil.rmtree(child, ignore_errors=True)


def prune(root: Path, keep: int) -> None:
    """Keep the ``keep`` newest complete checkpoints (0: keep all)."""
    if keep <= 0:
        return
    for _, path in complete_checkpoints(root)[:-keep]:
        _discard(path)


def save_checkpoint(accelerator, root: str | Path, step: int, trainer_state: dict, extra: dict | None = None,
                    keep: int = 0, sharded: tuple | None = None) -> Path:
    """Collective: every process calls it. ``extra`` maps file names to objects ``torch.save``d by the main
    process (e.g. the balancing controller's state). ``sharded``: ``(model, optimizer)`` sharded by the trainer
    (``train.fsdp``), saved by every process into ``sharded/`` next to what accelerate saves."""
    import torch

    root = Path(root)
    final = root / checkpoint_name(step)
    temporary = root / f".tmp-{checkpoint_name(step)}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        clean_leftovers(root)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    if sharded is not None:
        from zaya_vl.training.sharding import SHARDED_STATE, save_sharded

        save_sharded(*sharded, temporary / SHARDED_STATE)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name, obj in (extra or {}).items():
            torch.save(obj, temporary / name)
        write_json_atomic(temporary / TRAINER_STATE, {**trainer_state, "step": step})
        finalize(temporary, final, step)
        prune(root, keep)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str | Path, sharded: tuple | None = None) -> dict:
    """Collective: restore model, optimizer, scheduler and RNG states from ``path``; return the trainer state.
    ``sharded``: ``(model, optimizer)`` as given to :func:`save_checkpoint`."""
    path = Path(path)
    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no valid {COMPLETE} marker, or files "
                                "missing); a run killed while saving leaves such folders")
    accelerator.load_state(str(path))
    if sharded is not None:
        from zaya_vl.training.sharding import SHARDED_STATE, load_sharded

        load_sharded(*sharded, path / SHARDED_STATE)
    return read_trainer_state(path)


__all__ = ["COMPLETE", "TRAINER_STATE", "checkpoint_name", "clean_leftovers", "complete_checkpoints",
           "finalize", "is_complete", "latest_checkpoint", "load_checkpoint", "prune", "read_trainer_state",
           "save_checkpoint", "write_json_atomic"]
