"""The runner against inputs that used to give silently wrong or crashing evals: images decoded unlike `ask`,
stale predictions reused for other data, an image the processor refuses, two runs in one folder."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from zaya_vl.eval_vl import run_eval
from zaya_vl.eval_vl.task import decode_image
from zaya_vl.fileio import LOCK_NAME
from zaya_vl.vision import load_image


class PixelPredictor:
    """Replies with the mean RGB of each request's first image: what the model would be shown."""

    def __init__(self):
        self.seen = []

    def predict(self, requests):
        self.seen += [request.item_id for request in requests]
        return [" ".join(str(int(v)) for v in np.asarray(r.images[0]).reshape(-1, 3).mean(0).round()) for r in requests]


def _png(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def _ai2d(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _row(image: str, answer: str = "0") -> dict:
    return {"question": "q", "options": ["a", "b"], "answer": answer, "image": image}


def test_eval_sees_the_pixels_ask_and_training_see(tmp_path):
    # Black text-free page with a transparent background: convert("RGB") gives black, load_image white.
    transparent = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    # 16-bit grey at half scale: a bare convert clips it to white.
    deep = Image.fromarray(np.full((30, 40), 32768, dtype=np.uint16))
    # A landscape photo stored portrait with EXIF orientation 6 (rotate 90° on display).
    rotated = Image.new("RGB", (30, 40), (255, 0, 0))
    rotated.paste((0, 0, 255), (0, 0, 30, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "t.png").write_bytes(_png(transparent))
    (tmp_path / "d.png").write_bytes(_png(deep))
    rotated.save(tmp_path / "r.jpg", exif=exif, quality=95)
    for name in ("t.png", "d.png", "r.jpg"):
        ours = decode_image(name, tmp_path, "1", "image")
        reference = load_image(tmp_path / name)
        assert ours.size == reference.size and np.array_equal(np.asarray(ours), np.asarray(reference)), name
    assert np.asarray(decode_image("t.png", tmp_path, "1", "image")).min() == 255  # white, not black
    assert 120 <= np.asarray(decode_image("d.png", tmp_path, "1", "image")).mean() <= 135  # grey, not white
    assert decode_image("r.jpg", tmp_path, "1", "image").size == (40, 30)  # rotated upright


def test_rerun_with_other_data_is_refused_not_reported_with_old_predictions(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    first = _ai2d(tmp_path / "first.jsonl", [_row("a.png", "0"), _row("a.png", "1")])
    second = _ai2d(tmp_path / "second.jsonl", [_row("a.png", "1"), _row("a.png", "1")])  # same ids, other answers
    out = tmp_path / "run"
    run_eval(PixelPredictor(), ["ai2d"], out, data_overrides={"ai2d": first}, show_progress=False)
    with pytest.raises(ValueError, match=r"holds predictions for other ai2d data than this run's --data"):
        run_eval(PixelPredictor(), ["ai2d"], out, data_overrides={"ai2d": second}, show_progress=False)
    # The same data under another path, and a larger --limit, are the same run.
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "a.png").write_bytes((tmp_path / "a.png").read_bytes())
    copy = _ai2d(tmp_path / "copy" / "first.jsonl", [_row("a.png", "0"), _row("a.png", "1")])
    again = PixelPredictor()
    run_eval(again, ["ai2d"], out, data_overrides={"ai2d": copy}, show_progress=False)
    assert again.seen == []
    assert json.loads((out / "run.json").read_text())["data"]["ai2d"]


def test_image_the_processor_refuses_is_that_items_error_and_the_run_finishes(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "ok.png")
    Image.new("RGB", (4200, 20)).save(tmp_path / "strip.png")  # aspect ratio 210: smart_resize raises
    (tmp_path / "bad.png").write_bytes(_png(Image.new("RGB", (20, 20)))[:40])  # truncated
    data = _ai2d(tmp_path / "d.jsonl", [_row("ok.png"), _row("strip.png"), _row("bad.png"), _row("ok.png")])
    predictor = PixelPredictor()
    results = run_eval(predictor, ["ai2d"], tmp_path / "run", batch_size=4, data_overrides={"ai2d": data},
                       show_progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "ai2d" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["0", "1", "2", "3"]  # data order, errors in their place
    assert predictor.seen == ["0", "3"]
    assert "item 1: image in 'image' is 4200x20 pixels" in records[1]["error"] and "aspect ratio" in records[1]["error"]
    assert records[2]["error"].startswith("item 2: cannot decode image in 'image'")
    assert results["tasks"]["ai2d"]["n_errors"] == 2


def test_second_live_eval_into_one_folder_is_refused(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    data = _ai2d(tmp_path / "d.jsonl", [_row("a.png")])
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from zaya_vl.fileio import OutputLock; "
                               "OutputLock(sys.argv[1], 'zaya-vl eval').acquire(); print('locked', flush=True); "
                               "sys.stdin.readline()", str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=rf"in use by zaya-vl eval \(pid {holder.pid}"):
            run_eval(PixelPredictor(), ["ai2d"], out, data_overrides={"ai2d": data}, show_progress=False)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    finally:
        holder.communicate("\n", timeout=60)
    run_eval(PixelPredictor(), ["ai2d"], out, data_overrides={"ai2d": data}, show_progress=False)
    assert not (out / LOCK_NAME).exists() and (out / "results.json").exists()
