"""`zaya-vl demo`: the bundled tiny ZAYA1-VL answers questions about example documents, then scores itself.

    from zaya_vl.demo import run_demo
    results = run_demo()                   # the bundled model, examples/*.png, examples/tiny_docvqa/eval/

It loads the model once, asks fixed questions about each example image (printing image | question | answer |
seconds), then runs the resumable eval runner on the held-out DocVQA / AI2D split and prints the scores per task
and per question type. Questions go through the eval tasks' own prompts, so an answer here is what the
benchmark would have scored.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO_ROOT / "examples" / "tiny_docvqa" / "model"
DEFAULT_EXAMPLES = REPO_ROOT / "examples"
DEFAULT_EVAL = REPO_ROOT / "examples" / "tiny_docvqa" / "eval"
DEFAULT_OUTPUT = REPO_ROOT / "runs" / "demo"
TASKS = ("docvqa", "ai2d")  # each read from <eval_dir>/<task>.jsonl

# image -> questions; a (question, options) pair is multiple choice, asked with AI2D's prompt.
QUESTIONS = {
    "receipt.png": ["What is the total?", "What is the date?", "What is the vendor name?"],
    "form.png": ["What is the name?", "What is the ID number?"],
    "chart.png": ["Which bar is the highest?", "Which bar is the lowest?"],
    "diagram.png": [("Which shape is connected to the square?", ["circle", "diamond", "triangle", "hexagon"])],
}
# How the generator's DocVQA question_types ([kind, question, tier]) are grouped in the score table.
LABEL_GROUPS = {"receipt": "document", "form": "document", "chart": "document", "easy": "tier", "hard": "tier"}


def run_demo(model: str | Path = DEFAULT_MODEL, examples_dir: str | Path = DEFAULT_EXAMPLES,
             eval_dir: str | Path = DEFAULT_EVAL, output_dir: str | Path = DEFAULT_OUTPUT,
             limit: int | None = None, batch_size: int = 8, max_new_tokens: int | None = None,
             **placement) -> dict:
    """Answer the example questions, evaluate on `eval_dir` into `output_dir` (resumable); return the
    results dict written to `output_dir/results.json`, plus "examples": the answers to the example questions.
    `limit`: first N items of each eval task. `max_new_tokens`: a cap on every reply (default: each task's).
    `placement`: ``device`` / ``device_map`` / ``dtype`` for ``VLAssistant.from_pretrained`` (default: the GPU
    in bf16 when there is one)."""
    from zaya_vl.eval_vl.registry import get_task
    from zaya_vl.eval_vl.runner import run_eval
    from zaya_vl.inference import VLAssistant

    model, examples_dir, eval_dir, output_dir = map(Path, (model, examples_dir, eval_dir, output_dir))
    data = {task: eval_dir / f"{task}.jsonl" for task in TASKS}
    _require([model / "config.json", *(examples_dir / name for name in QUESTIONS), *data.values()])

    assistant = VLAssistant.from_pretrained(str(model), batch_size=batch_size, **placement)
    print(f"model: {model}\n")
    asked = [(name, question) for name, questions in QUESTIONS.items() for question in questions]
    shown = [q if isinstance(q, str) else f"{q[0]} ({', '.join(q[1])})" for _, q in asked]
    width = max(map(len, shown))
    print(f"{'image':<12} | {'question':<{width}} | {'answer':<32} | seconds")
    examples = []
    for (name, question), text in zip(asked, shown):
        task, item = (get_task("ai2d"), {"question": question[0], "options": question[1]}) \
            if isinstance(question, tuple) else (get_task("docvqa"), {"question": question})
        image = task.images({"image": str(examples_dir / name)}, None, name)
        start = time.perf_counter()
        answer = assistant.ask(image, task.build_prompt(item), max_new_tokens=max_new_tokens or task.max_new_tokens)
        seconds = time.perf_counter() - start
        print(f"{name:<12} | {text:<{width}} | {one_line(answer):<32} | {seconds:7.2f}")
        examples.append({"image": name, "question": text, "answer": answer, "seconds": round(seconds, 3)})

    model_name = str(model.resolve())
    config = {"demo": True, "model_files": _fingerprint(model), "data_files": _fingerprint(*data.values()),
              "max_new_tokens": max_new_tokens}
    _forget_stale_demo_run(output_dir, {"model": model_name, "config": config})
    print(f"\nheld-out eval split: {eval_dir}" + (f" (first {limit} items per task)" if limit is not None else ""))
    results = run_eval(assistant, list(TASKS), output_dir, limit=limit, batch_size=batch_size,
                       data_overrides={task: str(path) for task, path in data.items()},
                       model_name=model_name, config=config,
                       max_new_tokens={task: max_new_tokens for task in TASKS} if max_new_tokens else None)
    print_scores(results)
    print(f"\nresults written to {output_dir}/: results.json, results.md, "
          + ", ".join(f"{task}/predictions.jsonl" for task in TASKS))
    return {**results, "examples": examples}


def print_scores(results: dict) -> None:
    print(f"\n{'task':<8} {'metric':<12} {'score':>7} {'n':>5} {'errors':>6}  other scores")
    for name, summary in results["tasks"].items():
        other = ", ".join(f"{key} {value:.2f}" for key, value in summary["extra_scores"].items())
        print(f"{name:<8} {summary['metric']:<12} {summary['score']:>7.2f} {summary['n']:>5} "
              f"{summary['n_errors']:>6}  {other}".rstrip())
    for name, summary in results["tasks"].items():
        cells = [(LABEL_GROUPS.get(label, "question"), label, cell)
                 for by_label in summary["breakdowns"].values() for label, cell in by_label.items()]
        if not cells:
            print(f"\n{name}: this data gives no breakdown by question type")
            continue
        print(f"\n{name} by question type\n{'group':<9} {'label':<14} {'score':>7} {'n':>5}")
        order = {"document": 0, "question": 1, "tier": 2}
        for group, label, cell in sorted(cells, key=lambda c: (order[c[0]], c[1])):
            print(f"{group:<9} {label:<14} {cell['score']:>7.2f} {cell['n']:>5}")


def one_line(text: str) -> str:
    """An answer as one printable line (a random or undertrained model can emit control characters)."""
    return "".join(char if char.isprintable() else "\N{REPLACEMENT CHARACTER}" for char in " ".join(text.split()))


def _require(paths: list[Path]) -> None:
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError("the demo needs files that are not there:\n  " + "\n  ".join(missing)
                                + "\nRun `make tiny-model` to rebuild the bundled model, its example images and "
                                "its held-out eval split (or pass --model / --eval-dir of your own).")


def _fingerprint(*paths: Path) -> str:
    """Names, sizes and modification times of the files (a folder: every file under it): rebuilding the model
    or regenerating the eval data changes it, so a resumed demo never mixes predictions of two models."""
    files = sorted(p for path in paths for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _forget_stale_demo_run(output_dir: Path, identity: dict) -> None:
    """A demo run of another model or other data in `output_dir` is discarded (only the files a demo writes);
    anything else there is left to run_eval, which refuses to mix runs."""
    run_file = output_dir / "run.json"
    previous = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else {}
    # run.json holds more than the demo's identity (the eval pins its data too): compare what the demo wrote.
    if previous.get("config", {}).get("demo") and {key: previous.get(key) for key in identity} != identity:
        print(f"\nthe model or eval data changed since the last demo run in {output_dir}: starting the eval over")
        for name in ["run.json", "results.json", "results.md", *(f"{task}/predictions.jsonl" for task in TASKS)]:
            (output_dir / name).unlink(missing_ok=True)


__all__ = ["DEFAULT_EVAL", "DEFAULT_EXAMPLES", "DEFAULT_MODEL", "DEFAULT_OUTPUT", "QUESTIONS", "run_demo"]
