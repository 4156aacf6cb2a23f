"""Adversarial pass over the eval runner, `zaya-vl score` and the output-folder lock: each bad input is run and
classed as clear error / unhelpful crash / silent wrong / data lost / ok (handled right). No model weights: a
predictor that replies with the mean pixel and runs the processor's `smart_resize` as the real one does.

    .venv/bin/python bench/hostile_eval_pass.py
Run it under a memory limit (`ulimit -v 6000000`) against older code: the runaway reply once grew to 23 GB.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from zaya_vl.eval_vl import cli, run_eval
from zaya_vl.eval_vl.mathvista_answer import mathvista_is_correct


class ProcessorLikePredictor:
    def predict(self, requests):
        for request in requests:
            for image in request.images:
                smart_resize(image.height, image.width)  # what the real processor does first
        return [str(int(np.asarray(r.images[0]).mean())) for r in requests]


def _png(image, **kw):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kw)
    return buffer.getvalue()


def _timed_out(*_):
    raise TimeoutError("still running after 60 s")


def main() -> None:
    signal.signal(signal.SIGALRM, _timed_out)
    root = Path(tempfile.mkdtemp(prefix="hostile_eval_"))
    outcomes: list[tuple[str, str, str]] = []

    def attempt(area: str, name: str, action, expect_error: str | None = None, check=None):
        try:
            result = action()
        except SystemExit as error:
            message = str(error)
            kind = "clear error" if expect_error and expect_error in message else "unhelpful crash"
            outcomes.append((area, name, f"{kind}: {message[:110]}"))
            return
        except Exception as error:  # noqa: BLE001
            message = f"{type(error).__name__}: {error}"
            kind = "clear error" if expect_error and expect_error in message else "unhelpful crash"
            outcomes.append((area, name, f"{kind}: {message[:110]}"))
            return
        if expect_error:
            outcomes.append((area, name, "silent wrong: no error"))
        else:
            verdict = check(result) if check else "ok"
            outcomes.append((area, name, verdict))

    # --- images in eval data ---------------------------------------------------------------------------
    images = root / "img"
    images.mkdir()
    Image.new("RGBA", (40, 30), (0, 0, 0, 0)).save(images / "transparent.png")
    Image.fromarray(np.full((30, 40), 32768, dtype=np.uint16)).save(images / "deep.png")
    Image.new("RGB", (4200, 20)).save(images / "strip.png")
    Image.new("RGB", (20, 20)).save(images / "ok.png")
    (images / "truncated.png").write_bytes(_png(Image.new("RGB", (20, 20)))[:40])
    (images / "text.png").write_text("not an image")
    (images / "empty.png").write_bytes(b"")
    expected_mean = {"transparent.png": 255, "deep.png": 128}
    for name in ["transparent.png", "deep.png", "strip.png", "truncated.png", "text.png", "empty.png", "absent.png",
                 "/etc", "data:image/png;base64,!!!"]:
        data = root / f"d_{abs(hash(name))}.jsonl"
        path = name if name.startswith(("/", "data:")) else f"img/{name}"
        data.write_text(json.dumps({"question": "q", "options": ["a", "b"], "answer": "0", "image": path}) + "\n")

        def action(data=data):
            return run_eval(ProcessorLikePredictor(), ["ai2d"], root / f"o_{data.stem}", data_overrides={"ai2d": data},
                            show_progress=False)

        def check(results, name=name):
            record = json.loads(next((root / f"o_{data.stem}").glob("ai2d/predictions.jsonl")).read_text())
            if record["error"]:
                return "clear error (item record): " + record["error"][:90]
            if name in expected_mean and abs(int(record["prediction"]) - expected_mean[name]) > 3:
                return f"silent wrong: mean pixel {record['prediction']}"
            return "ok"
        attempt("images", name, action, check=check)

    # --- data / reruns ---------------------------------------------------------------------------------
    first, second = root / "first.jsonl", root / "second.jsonl"
    first.write_text(json.dumps({"question": "q", "options": ["a", "b"], "answer": "0", "image": "img/ok.png"}) + "\n")
    second.write_text(json.dumps({"question": "q", "options": ["a", "b"], "answer": "1", "image": "img/ok.png"}) + "\n")
    run_eval(ProcessorLikePredictor(), ["ai2d"], root / "stale", data_overrides={"ai2d": first}, show_progress=False)
    attempt("data", "rerun into a finished folder with other --data", lambda: run_eval(
        ProcessorLikePredictor(), ["ai2d"], root / "stale", data_overrides={"ai2d": second}, show_progress=False),
        expect_error="other ai2d data")
    dup = root / "dup.jsonl"
    dup.write_text("".join(json.dumps({"pid": "1", "question": "q", "answer": "1", "question_type": "free_form",
                                       "answer_type": "integer", "image": "img/ok.png"}) + "\n" for _ in range(2)))
    attempt("data", "duplicate item ids", lambda: run_eval(ProcessorLikePredictor(), ["mathvista"], root / "dup",
                                                           data_overrides={"mathvista": dup}, show_progress=False),
            expect_error="duplicate item ids")

    # --- score -----------------------------------------------------------------------------------------
    ai2d = root / "score.jsonl"
    ai2d.write_text("".join(json.dumps({"question": "q", "options": ["a", "b"], "answer": "0", "image": "img/ok.png"})
                            + "\n" for _ in range(3)))
    cases = {
        "wrong prediction key": (b'{"id": 0, "answer": "A"}\n', "no 'prediction' key"),
        "JSON array file": (b'[{"id": 0, "prediction": "A"}]', "JSON array"),
        "empty file": (b"", "empty file"),
        "duplicate ids": (b'{"id": 0, "prediction": "A"}\n{"id": 0, "prediction": "B"}\n', ":2: duplicate id"),
        "non-UTF-8 byte": (b'{"id": 0, "prediction": "caf\xe9"}\n', ":1: not UTF-8"),
        "unknown id": (b'{"id": 99, "prediction": "A"}\n', "ids not in"),
        "not JSON": (b'{"id": 0, "prediction": \n', ":1: not JSON"),
    }
    for name, (content, expected) in cases.items():
        path = root / f"p_{abs(hash(name))}.jsonl"
        path.write_bytes(content)
        attempt("score", name, lambda path=path: cli.main(["score", "--task", "ai2d", "--data", str(ai2d),
                                                           "--predictions", str(path), "--output", str(root / "s")]),
                expect_error=expected)
    nonl = root / "nonl.jsonl"
    nonl.write_bytes(b'{"id": 0, "prediction": "A"}\n{"id": 1, "prediction": "A"}')
    attempt("score", "last line without newline", lambda: cli.main(
        ["score", "--task", "ai2d", "--data", str(ai2d), "--predictions", str(nonl), "--output", str(root / "n")]),
        check=lambda _: "ok" if len((root / "n" / "scored.jsonl").read_text().splitlines()) == 2 else "silent wrong")
    sur = root / "sur.jsonl"
    sur.write_text('{"id": 0, "prediction": "A"}\n{"id": 1, "prediction": "\\ud83d"}\n')
    attempt("score", "lone surrogate with --output", lambda: cli.main(
        ["score", "--task", "ai2d", "--data", str(ai2d), "--predictions", str(sur), "--output", str(root / "u")]),
        check=lambda _: "ok" if len(list((root / "u").iterdir())) == 3 else "data lost: partial outputs")

    # --- resources -------------------------------------------------------------------------------------
    def runaway():
        started = time.process_time()
        signal.alarm(60)  # a quadratic extractor would run for hours (and grow to many GB): stop and say so
        mathvista_is_correct("The answer is 1/2 " * 250_000 + "\nThe answer is 7", question_type="free_form",
                             answer_type="integer", answer="7", choices=None, places=0)
        signal.alarm(0)
        return time.process_time() - started
    attempt("resources", "4.5 MB MathVista reply", runaway,
            check=lambda seconds: "ok" if seconds < 5 else f"unhelpful: {seconds:.0f} s")

    # --- concurrency -----------------------------------------------------------------------------------
    out = root / "locked"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from zaya_vl.fileio import OutputLock; "
                               "OutputLock(sys.argv[1], 'zaya-vl eval').acquire(); print('x', flush=True); "
                               "sys.stdin.readline()", str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    holder.stdout.readline()
    attempt("concurrency", "second live eval into one folder", lambda: run_eval(
        ProcessorLikePredictor(), ["ai2d"], out, data_overrides={"ai2d": first}, show_progress=False),
        expect_error="in use by zaya-vl eval")
    holder.kill()
    holder.wait()
    attempt("concurrency", "eval after the lock holder was SIGKILLed", lambda: run_eval(
        ProcessorLikePredictor(), ["ai2d"], out, data_overrides={"ai2d": first}, show_progress=False))

    for area, name, verdict in outcomes:
        print(f"{area:12s} | {name:45s} | {verdict}")
    tally = Counter(verdict.split(":")[0].split(" (")[0] for _, _, verdict in outcomes)
    print(f"\ntried {len(outcomes)}: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())))


if __name__ == "__main__":
    main()
