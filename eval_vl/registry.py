"""The task registry and the one public scoring entry point."""

from __future__ import annotations

from .ai2d import AI2D, AI2D_NO_MASK
from .docvqa import DOCVQA
from .mathvista import MATHVISTA, MATHVISTA_FORMAT
from .task import Task

TASKS: dict[str, Task] = {
    task.name: task for task in (DOCVQA, AI2D, AI2D_NO_MASK, MATHVISTA, MATHVISTA_FORMAT)
}


def get_task(name: str | Task) -> Task:
    if isinstance(name, Task):
        return name
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None


def parse_task_list(names: str) -> list[Task]:
    """'docvqa,ai2d' -> tasks, in order, without duplicates."""
    picked = [name.strip() for name in names.split(",") if name.strip()]
    if not picked:
        raise ValueError(f"no task given; valid tasks: {', '.join(TASKS)}")
    return [get_task(name) for name in dict.fromkeys(picked)]


def score_prediction(task: str, item: dict, prediction: str | None) -> float:
    """Score one prediction for one dataset row, in [0, 1].

    `task`: "docvqa" | "ai2d" | "mathvista" (or another TASKS name); `item`: the row as `datasets`
    returns it. Raises ValueError for an unknown task and ItemError (a ValueError) naming the field
    when the row lacks one the score needs. The headline score: lmms-eval's for DocVQA and AI2D,
    our deterministic extraction for MathVista.
    """
    resolved = get_task(task)
    resolved.check(item, resolved.label(item))
    return float(resolved.score(item, prediction))
