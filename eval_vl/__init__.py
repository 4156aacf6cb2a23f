"""Evaluation of ZAYA1-VL on DocVQA, AI2D and MathVista, with lmms-eval's prompts and scores.

    from zaya_vl.eval_vl import score_prediction, run_eval, Request, TASKS
    score_prediction("docvqa", row, "$1,234")          # -> float in [0, 1]
    run_eval(predictor, ["docvqa", "ai2d"], "runs/x")    # resumable; writes results.json/.md

Modules: task (shared task base), docvqa / ai2d / mathvista (prompts + scoring), metrics (ANLS,
AI2D letters), mathvista_answer (offline MathVista extraction), data (loading), runner, records
(JSONL + atomic files), report, rescore, cli.
"""

from .data import TaskData, load_task_data
from .registry import TASKS, get_task, score_prediction
from .runner import Predictor, Request, run_eval
from .task import ItemError, Task

__all__ = [
    "TASKS",
    "ItemError",
    "Predictor",
    "Request",
    "Task",
    "TaskData",
    "get_task",
    "load_task_data",
    "run_eval",
    "score_prediction",
]
