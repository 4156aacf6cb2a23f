"""`zaya-vl score` on careless or broken predictions files: each is a clear error naming file and line, or is
scored right; never an all-zero score with exit 0, never half the output files."""

from __future__ import annotations

import json

import pytest

from zaya_vl.eval_vl import cli


def _score(tiny_data, path, *extra):
    return cli.main(["score", "--task", "ai2d", "--data", str(tiny_data.ai2d), "--predictions", str(path), *extra])


@pytest.mark.parametrize("content, message", [
    (b'{"id": 0, "answer": "B"}\n', r"p.jsonl:1: no 'prediction' key \(keys: \['answer', 'id'\]\); pass --prediction-key"),
    (b'{"qid": 0, "prediction": "B"}\n', r"p.jsonl:1: no 'id' key .*pass --id-key"),
    (b'[{"id": 0, "prediction": "B"}]\n', r"p.jsonl: a JSON array; score reads JSON Lines"),
    (b"", r"p.jsonl: empty file"),
    (b"\n  \n", r"p.jsonl: empty file"),
    (b'{"id": 0, "prediction": "B"}\n{"id": 1, "prediction": "A"}\n{"id": 0, "prediction": "C"}\n',
     r"p.jsonl:3: duplicate id '0' \(first on line 1\)"),
    (b'{"id": 0, "prediction": "B"}\n{"id": 1, "prediction": "caf\xe9"}\n', r"p.jsonl:2: not UTF-8 text \(byte 0xe9"),
    (b'{"id": 0, "prediction": "B"}\n"just a string"\n', r"p.jsonl:2: a JSON str, expected an object"),
    (b'{"id": 0, "prediction": ["B"]}\n', r"p.jsonl:1: 'prediction' is a list, expected text"),
])
def test_bad_predictions_files_are_named_errors(tiny_data, tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=message):
        _score(tiny_data, path, "--output", str(out))
    assert not out.exists()


def test_last_line_without_newline_is_scored(tiny_data, tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"id": 0, "prediction": "B"}\n{"id": 2, "prediction": "C"}')  # no final newline
    assert _score(tiny_data, path, "--output", str(tmp_path / "out")) == 0
    scored = [json.loads(line) for line in (tmp_path / "out" / "scored.jsonl").read_text().splitlines()]
    assert [(r["id"], r["score"]) for r in scored] == [("0", 1.0), ("2", 1.0)]


def test_lone_surrogate_writes_every_output_file(tiny_data, tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 0, "prediction": "B"}\n{"id": 1, "prediction": "\\ud83d oops"}\n')  # half an emoji
    out = tmp_path / "out"
    assert _score(tiny_data, path, "--output", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "scored.jsonl"]
    scored = [json.loads(line) for line in (out / "scored.jsonl").read_text(encoding="utf-8").splitlines()]
    assert scored[1]["prediction"] == "\ud83d oops" and scored[0]["score"] == 1.0  # lossless, via the JSON escape
    assert json.loads((out / "results.json").read_text())["tasks"]["ai2d"]["n"] == 2
