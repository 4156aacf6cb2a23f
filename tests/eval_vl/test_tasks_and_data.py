"""Prompts (lmms-eval's exact strings), image decoding, and loading local data in the hub schemas."""

import io

import pytest
from PIL import Image

from zaya_vl.eval_vl import TASKS, ItemError, load_task_data
from zaya_vl.eval_vl.task import decode_image


def test_docvqa_prompt_and_id(tiny_data):
    data = load_task_data("docvqa", tiny_data.docvqa)
    row = data.rows[0]
    assert TASKS["docvqa"].build_prompt(row) == (
        "<image>What is the date?\nAnswer the question using a single word or phrase."
    )
    assert TASKS["docvqa"].item_id(row, 0) == "101"
    assert TASKS["docvqa"].breakdown_keys(row) == {"question_types": ["handwritten", "form"]}
    assert TASKS["docvqa"].max_new_tokens == 32


def test_ai2d_prompt_renders_lettered_options(tiny_data):
    data = load_task_data("ai2d", tiny_data.ai2d)
    assert TASKS["ai2d"].build_prompt(data.rows[0]) == (
        "<image>Which part absorbs water?\nA. leaf\nB. root\nC. stem\nD. flower\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert TASKS["ai2d"].item_id(data.rows[3], 3) == "3"  # no id column: row index
    assert TASKS["ai2d"].max_new_tokens == 16
    assert TASKS["ai2d_no_mask"].hub_path == "Efficient-Large-Model/ai2d-no-mask"


def test_mathvista_query_prompt_is_the_dataset_query(tiny_data):
    row = load_task_data("mathvista", tiny_data.mathvista).rows[2]
    assert TASKS["mathvista"].build_prompt(row) == (
        "<image>Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n"
        "Question: Find the angle BOC.\nChoices:\n(A) 135°\n(B) 140°\n(C) 145°\n(D) 150°"
    )


def test_mathvista_format_prompt_matches_lmms_eval(tiny_data):
    rows = load_task_data("mathvista_format", tiny_data.mathvista).rows
    task = TASKS["mathvista_format"]
    assert task.build_prompt(rows[2]) == (
        "<image>Find the angle BOC.\nA. 135°\nB. 140°\nC. 145°\nD. 150°\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert task.prompt_text(rows[1]) == (
        "what is the total volume of the measuring cup? (Unit: g)\nAnswer the question using a single integer number."
    )
    assert task.prompt_text(rows[0]).endswith("Answer the question using a single floating-point number with one decimal place.")
    assert task.prompt_text(rows[5]).endswith("with two decimal places.")
    assert task.prompt_text(rows[4]).endswith("\nAnswer the question using a Python list.")


def test_mathvista_breakdown_keys(tiny_data):
    row = load_task_data("mathvista", tiny_data.mathvista).rows[1]
    keys = TASKS["mathvista"].breakdown_keys(row)
    assert keys["question_type"] == "free_form"
    assert keys["answer_type"] == "integer"
    assert keys["task"] == "visual question answering"
    assert keys["skills"] == ["numeric commonsense", "arithmetic reasoning"]


@pytest.mark.parametrize("task_name, path_attr, n", [("docvqa", "docvqa", 5), ("ai2d", "ai2d", 5), ("mathvista", "mathvista", 6)])
def test_local_data_loads_with_undecoded_images(tiny_data, task_name, path_attr, n):
    data = load_task_data(task_name, getattr(tiny_data, path_attr))
    assert len(data) == n
    images = TASKS[task_name].images(data.rows[0], data.base_dir, "x")
    assert len(images) == 1 and images[0].mode == "RGB" and images[0].size == (64, 48)


def test_limit_keeps_first_rows(tiny_data):
    data = load_task_data("mathvista", tiny_data.mathvista, limit=2)
    assert [row["pid"] for row in data.rows] == ["1", "2"]


def test_folder_of_parquet_files_loads(tiny_data):
    data = load_task_data("docvqa", tiny_data.docvqa.parent)
    assert list(data.rows["questionId"]) == ["101", "102", "103", "104", "105"]


def test_corrupt_and_missing_images_are_item_errors(tiny_data):
    docvqa = load_task_data("docvqa", tiny_data.docvqa)
    with pytest.raises(ItemError, match="item 104: cannot decode image in 'image'"):
        TASKS["docvqa"].images(docvqa.rows[3], docvqa.base_dir, "104")
    ai2d = load_task_data("ai2d", tiny_data.ai2d)
    with pytest.raises(ItemError, match="item 3: cannot decode image.*missing.png"):
        TASKS["ai2d"].images(ai2d.rows[3], ai2d.base_dir, "3")


def test_decode_image_accepts_every_cell_form(tmp_path):
    buffer = io.BytesIO()
    Image.new("L", (5, 3)).save(buffer, format="PNG")
    raw = buffer.getvalue()
    (tmp_path / "a.png").write_bytes(raw)
    forms = [Image.open(io.BytesIO(raw)), raw, {"bytes": raw, "path": None}, {"bytes": None, "path": "a.png"}, "a.png",
             str(tmp_path / "a.png")]
    for form in forms:
        image = decode_image(form, tmp_path, "1", "image")
        assert image.mode == "RGB" and image.size == (5, 3)
    with pytest.raises(ItemError, match="item 1: missing field 'image'"):
        decode_image(None, tmp_path, "1", "image")


def test_mathvista_falls_back_to_the_image_path(tmp_path):
    Image.new("RGB", (7, 7)).save(tmp_path / "1.jpg")
    row = {"pid": "1", "decoded_image": None, "image": "1.jpg"}
    assert TASKS["mathvista"].images(row, tmp_path, "1")[0].size == (7, 7)


def test_bad_data_paths_have_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_task_data("ai2d", tmp_path / "nope.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="expected a saved dataset folder"):
        load_task_data("ai2d", tmp_path / "data.csv")
    with pytest.raises(ValueError, match="unknown task 'chartqa'"):
        load_task_data("chartqa", tmp_path)


def test_jsonl_with_image_bytes_dicts_from_parquet_without_metadata(tmp_path):
    # A parquet written by pandas/pyarrow (no HF metadata) holds images as {"bytes", "path"} structs.
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "blue").save(buffer, format="PNG")
    table = pa.table({
        "question": ["q"], "options": [["x", "y"]], "answer": ["1"],
        "image": [{"bytes": buffer.getvalue(), "path": None}],
    })
    pq.write_table(table, tmp_path / "test.parquet")
    data = load_task_data("ai2d", tmp_path / "test.parquet")
    assert TASKS["ai2d"].images(data.rows[0], data.base_dir, "0")[0].getpixel((0, 0)) == (0, 0, 255)


@pytest.mark.parametrize(
    "task_name, hub_args",
    [
        ("docvqa", ("lmms-lab/DocVQA", "DocVQA", "validation")),
        ("ai2d", ("lmms-lab/ai2d", None, "test")),
        ("ai2d_no_mask", ("Efficient-Large-Model/ai2d-no-mask", None, "test")),
        ("mathvista", ("AI4Math/MathVista", None, "testmini")),
    ],
)
def test_without_local_data_the_hub_dataset_is_requested(monkeypatch, task_name, hub_args):
    # No network: a stand-in for datasets.load_dataset records what it was asked for.
    import datasets

    asked = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        asked.append((path, name, split))
        features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string")})
        return datasets.Dataset.from_dict({"image": [None], "question": ["q"]}, features=features)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_task_data(task_name)
    assert asked == [hub_args]
    assert data.base_dir is None and not data.rows.features["image"].decode
