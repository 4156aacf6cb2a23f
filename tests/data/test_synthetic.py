"""zaya_vl.data.synthetic: determinism, split hygiene, answers that match the page, schemas, pixels."""

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zaya_vl.data import charts, diagrams, forms, receipts
from zaya_vl.data.documents import KINDS, make_document, plan_split, render_document
from zaya_vl.data.formats import validate_ai2d_row, validate_chat_row, validate_docvqa_row
from zaya_vl.data.render import Font, get_font
from zaya_vl.data.synthetic import generate_dataset, iter_text, main, render_example
from zaya_vl.fileio import write_atomic
from zaya_vl.prompts import AI2D_POST_PROMPT, DOCVQA_POST_PROMPT

SEED = 7
N_TRAIN, N_TEST = 16, 16  # two documents per (tier, kind) in each split


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    generate_dataset(out, N_TRAIN, N_TEST, SEED, tiers=("easy", "hard"))
    return out


@pytest.fixture(scope="module")
def documents(dataset):
    return {row["doc_id"]: row for row in _read_jsonl(dataset / "documents.jsonl")}


@pytest.fixture(scope="module")
def qa_pairs(dataset):
    """(document row, question, chat target) for every chat row of both splits."""
    docs = {row["doc_id"]: row for row in _read_jsonl(dataset / "documents.jsonl")}
    pairs = []
    for split in ("train", "test"):
        for row in _read_jsonl(dataset / f"{split}.jsonl"):
            prompt = row["messages"][0]["content"][1]["text"]
            pairs.append((docs[row["doc_id"]], prompt, row["messages"][1]["content"][0]["text"]))
    return pairs


def test_same_seed_gives_identical_bytes_even_with_worker_processes(dataset, tmp_path):
    generate_dataset(tmp_path, N_TRAIN, N_TEST, SEED, tiers=("easy", "hard"), workers=2)
    first, second = _hashes(dataset), _hashes(tmp_path)
    assert len(first) == N_TRAIN + N_TEST + 6  # images + train, test, 2 eval, documents, manifest
    assert first == second


def test_different_seed_gives_different_documents(dataset, tmp_path):
    generate_dataset(tmp_path, N_TRAIN, N_TEST, SEED + 1, tiers=("easy", "hard"))
    first, second = _hashes(dataset), _hashes(tmp_path)
    assert first.keys() == second.keys()  # same ids: ids depend only on position, kind and tier
    images = [name for name in first if name.startswith("images/")]
    assert all(first[name] != second[name] for name in images)
    assert first["train.jsonl"] != second["train.jsonl"]


def test_train_and_test_share_no_document(dataset, documents):
    train = _read_jsonl(dataset / "train.jsonl")
    test = _read_jsonl(dataset / "test.jsonl")
    train_images = {r["messages"][0]["content"][0]["image"] for r in train}
    test_images = {r["messages"][0]["content"][0]["image"] for r in test}
    assert len(train_images) == N_TRAIN and len(test_images) == N_TEST
    assert not train_images & test_images
    content = {split: {json.dumps(d["content"], sort_keys=True) for d in documents.values() if d["split"] == split}
               for split in ("train", "test")}
    assert len(content["train"]) == N_TRAIN and not content["train"] & content["test"]
    # The eval files only point at test images.
    for name in ("docvqa", "ai2d"):
        for row in _read_jsonl(dataset / "eval" / f"{name}.jsonl"):
            assert row["image"].removeprefix("../") in test_images


def test_a_document_already_seen_is_redrawn():
    first = make_document(SEED, "test", 0, "receipt", "easy")
    seen = {first.fingerprint()}
    (redrawn,) = plan_split(SEED, "test", 1, ("easy",), seen)
    assert redrawn.kind == "receipt" and redrawn.fingerprint() != first.fingerprint()
    assert seen == {first.fingerprint(), redrawn.fingerprint()}


def test_receipt_answers_match_the_receipt(qa_pairs):
    checked = 0
    for doc, prompt, answer in qa_pairs:
        if doc["kind"] != "receipt":
            continue
        content = doc["content"]
        question = prompt.removesuffix(DOCVQA_POST_PROMPT)
        prices = {item["name"]: item["cents"] for item in content["items"]}
        if question == "What is the total?":
            cents = sum(prices.values())
            assert answer == f"{cents // 100}.{cents % 100:02d}"
            assert str(receipts.money(cents)) in doc["text"]  # the TOTAL line is printed
        elif question == "What is the vendor name?":
            assert answer == content["vendor"] and answer in receipts.VENDORS
        elif question == "What is the date?":
            assert answer == content["date"] and re.fullmatch(r"20\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d)", answer)
        else:
            item = re.fullmatch(r"What is the price of (\w+)\?", question).group(1)
            assert answer == receipts.money(prices[item])
        checked += 1
    assert checked == 4 * 8  # 8 receipts (2 per split and tier), 4 questions each


def test_chart_answers_match_the_chart(qa_pairs):
    checked = 0
    for doc, prompt, answer in qa_pairs:
        if doc["kind"] != "chart":
            continue
        values = dict(zip(doc["content"]["labels"], doc["content"]["values"]))
        assert len(set(values.values())) == len(values) and all(v % 10 == 0 and 10 <= v <= 90 for v in values.values())
        question = prompt.removesuffix(DOCVQA_POST_PROMPT)
        if "highest" in question:
            assert values[answer] == max(values.values())
        elif "lowest" in question:
            assert values[answer] == min(values.values())
        else:
            label = re.fullmatch(r"What is the value of (\w+)\?", question).group(1)
            assert answer == str(values[label])
        checked += 1
    assert checked == 3 * 8


def test_form_answers_match_the_form(qa_pairs):
    checked = 0
    for doc, prompt, answer in qa_pairs:
        if doc["kind"] == "form":
            fields = {forms.FIELD_QUESTIONS[label]: value for label, value in doc["content"]["fields"]}
            asked = re.fullmatch(r"What is the (.+)\?", prompt.removesuffix(DOCVQA_POST_PROMPT)).group(1)
            assert answer == fields[asked]
            checked += 1
    assert checked >= 3 * 8


def test_diagram_answers_match_the_diagram(dataset, qa_pairs):
    checked = 0
    for doc, prompt, letter in qa_pairs:
        if doc["kind"] != "diagram":
            continue
        question, *option_lines = prompt.removesuffix(AI2D_POST_PROMPT).split("\n")
        options = [re.fullmatch(r"[A-D]\. (\w+)", line).group(1) for line in option_lines]
        assert len(options) == 4 and len(set(options)) == 4
        chosen = options["ABCD".index(letter)]
        nodes = doc["content"]["nodes"]
        color_of = {n["shape"]: n["color"] for n in nodes}
        if m := re.fullmatch(r"What color is the (\w+)\?", question):
            assert chosen == color_of[m.group(1)]
        elif m := re.fullmatch(r"Which shape is (\w+)\?", question):
            assert color_of.get(chosen) == m.group(1)
        else:
            asked = re.fullmatch(r"Which shape is connected to the (\w+)\?", question).group(1)
            shape_index = {n["shape"]: i for i, n in enumerate(nodes)}
            edges = {frozenset(e) for e in doc["content"]["edges"]}
            assert frozenset((shape_index[asked], shape_index[chosen])) in edges
            assert sum(shape_index[asked] in e for e in edges) == 1  # one neighbour: unambiguous
        checked += 1
    assert checked == 3 * 8
    # The AI2D rows hold the same answers, as a 0-based index string.
    chat = {r["id"]: r["messages"][1]["content"][0]["text"] for r in _read_jsonl(dataset / "test.jsonl")}
    ai2d = _read_jsonl(dataset / "eval" / "ai2d.jsonl")
    assert len(ai2d) == 3 * 4
    for row in ai2d:
        assert "ABCD"[int(row["answer"])] == chat[row["id"]]


def test_rows_have_exactly_the_agreed_schemas(dataset):
    train, test = _read_jsonl(dataset / "train.jsonl"), _read_jsonl(dataset / "test.jsonl")
    for row in train + test:
        assert list(row) == ["id", "doc_id", "kind", "tier", "messages"]
        validate_chat_row(row)
        user, assistant = row["messages"]
        image = user["content"][0]["image"]
        assert image == f"images/{row['doc_id']}.png" and (dataset / image).is_file()
        assert row["id"].startswith(row["doc_id"] + "-q") and row["kind"] in KINDS
    assert len({r["id"] for r in train + test}) == len(train + test)

    docvqa = _read_jsonl(dataset / "eval" / "docvqa.jsonl")
    test_non_diagram = [r for r in test if r["kind"] != "diagram"]
    assert [r["questionId"] for r in docvqa] == [r["id"] for r in test_non_diagram]
    for row in docvqa:
        assert list(row) == ["questionId", "question", "question_types", "image", "docId", "ucsf_document_id",
                             "ucsf_document_page_no", "answers", "data_split"]
        validate_docvqa_row(row)
        assert type(row["docId"]) is int and row["data_split"] == "test"
        assert row["question_types"][0] in ("receipt", "form", "chart") and len(row["question_types"]) == 3
        assert (dataset / "eval" / row["image"]).resolve().is_file()
    totals = [r for r in docvqa if r["question_types"][1] == "total"]
    assert totals and all(r["answers"] == [r["answers"][0], "$" + r["answers"][0]] for r in totals)
    # Same document -> same docId; different documents -> different docIds.
    assert len({(r["docId"], r["ucsf_document_id"]) for r in docvqa}) == len({r["docId"] for r in docvqa})

    for row in _read_jsonl(dataset / "eval" / "ai2d.jsonl"):
        assert list(row) == ["id", "question", "options", "answer", "image"]
        validate_ai2d_row(row)
        assert (dataset / "eval" / row["image"]).resolve().is_file()


@pytest.mark.parametrize("validate, row", [
    (validate_ai2d_row, {"id": "a", "question": "q", "options": ["a", "b", "c", "d"], "answer": "B", "image": "i"}),
    (validate_ai2d_row, {"id": "a", "question": "q", "options": ["a", "b", "c"], "answer": "1", "image": "i"}),
    (validate_docvqa_row, {"questionId": "1", "question": "q", "question_types": ["x"], "image": "i",
                           "docId": "3", "ucsf_document_id": "d", "ucsf_document_page_no": "1",
                           "answers": ["a"], "data_split": "test"}),
    (validate_chat_row, {"id": "a", "doc_id": "d", "kind": "form", "tier": "easy", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "q"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]}),
])
def test_validators_reject_malformed_rows(validate, row):
    with pytest.raises(ValueError):
        validate(row)


def test_images_load_at_the_requested_size(dataset, tmp_path):
    for path in (dataset / "images").iterdir():
        with Image.open(path) as image:
            assert image.size == (336, 336) and image.mode == "RGB"
            assert np.asarray(image).min() < 100  # something dark was drawn
    generate_dataset(tmp_path, 4, 0, SEED, image_size=(320, 400))
    for path in (tmp_path / "images").iterdir():
        with Image.open(path) as image:
            assert image.size == (320, 400)


def test_printed_answer_is_exactly_the_answer_text(dataset, documents):
    """On easy pages, the pixels in each answer's box are the answer string drawn in some font size."""
    checked = 0
    for row in _read_jsonl(dataset / "eval" / "docvqa.jsonl"):
        doc = documents[row["ucsf_document_id"]]
        qa = next(qa for qa in doc["questions"] if qa["id"] == row["questionId"])
        if doc["tier"] != "easy" or qa["box"] is None or (doc["kind"] in GRID_KINDS and qa["box"] != "vendor"):
            continue  # grid values: test_easy_field_values_print_one_glyph_per_token_cell
        with Image.open(dataset / "eval" / row["image"]) as image:
            page = np.asarray(image.convert("RGB"))
        box = doc["boxes"][qa["box"]]
        crop = page[box[1]:box[3], box[0]:box[2]]
        assert (crop < 128).any()
        answer = row["answers"][0]
        assert any(_draws_exactly(crop, answer, get_font(size, bold)) for size in range(8, 41)
                   for bold in (False, True)), f"{answer!r} not found in box {qa['box']} of {doc['doc_id']}"
        checked += 1
    assert checked >= 2  # the vendor names of the easy test receipts, printed in proportional type


GRID_KINDS = ("receipt", "form", "chart")  # easy tier: values printed one character per 28 px grid cell
CELL = 28


def test_easy_field_values_print_one_glyph_per_token_cell(dataset, documents):
    """Easy receipts/forms: each answer character fills exactly one 28 px cell (one merged vision token), and
    a character looks the same in every cell and document, so reading it is a per-token lookup."""
    glyphs: dict[str, bytes] = {}
    checked = 0
    for row in _read_jsonl(dataset / "eval" / "docvqa.jsonl"):
        doc = documents[row["ucsf_document_id"]]
        qa = next(qa for qa in doc["questions"] if qa["id"] == row["questionId"])
        if doc["tier"] != "easy" or doc["kind"] not in GRID_KINDS or qa["box"] in (None, "vendor"):
            continue
        with Image.open(dataset / "eval" / row["image"]) as image:
            page = np.asarray(image.convert("L"))
        answer = row["answers"][0]
        x0, y0, x1, y1 = doc["boxes"][qa["box"]]
        assert x0 % CELL == 0 and y0 % CELL == 0 and (x1 - x0, y1 - y0) == (CELL * len(answer), CELL)
        for k, ch in enumerate(answer):
            cell = page[y0:y1, x0 + k * CELL:x0 + (k + 1) * CELL]
            assert (cell < 128).any() == (ch != " "), (doc["doc_id"], answer, k)
            assert (cell[0] == 255).all() and (cell[-1] == 255).all()  # no ink touches the cell's edges
            assert (cell[:, 0] == 255).all() and (cell[:, -1] == 255).all()
            assert glyphs.setdefault(ch, cell.tobytes()) == cell.tobytes(), f"{ch!r} drawn two ways"
        checked += 1
    assert checked >= 8 and len(set(glyphs.values())) == len(glyphs)  # distinct characters look distinct


def test_cells_name_the_glyph_inked_in_each_token_cell(dataset, documents):
    """`cells` (documents.jsonl and the chat rows' image part): the answer of every easy grid field is spelled at
    its box's cells, every named cell has ink, and pages off the token grid (hard tier, diagrams) have none."""
    rows = {row["doc_id"]: row for row in _read_jsonl(dataset / "train.jsonl") + _read_jsonl(dataset / "test.jsonl")}
    spelled = 0
    for doc in documents.values():
        assert rows[doc["doc_id"]]["messages"][0]["content"][0].get("cells") == doc["cells"]
        if doc["tier"] != "easy" or doc["kind"] not in GRID_KINDS:
            assert doc["cells"] is None, doc["doc_id"]
            continue
        cells = doc["cells"]
        assert len(cells) == 12 and all(len(line) == 12 for line in cells)
        for qa in doc["questions"]:
            if qa["box"] in (None, "vendor"):
                continue
            x0, y0, x1, _ = doc["boxes"][qa["box"]]
            assert cells[y0 // CELL][x0 // CELL:x1 // CELL] == qa["answers"][0]
            spelled += 1
        with Image.open(dataset / doc["image"]) as image:
            page = np.asarray(image.convert("L"))
        for r, line in enumerate(cells):
            for c, glyph in enumerate(line):
                if glyph != " ":
                    assert (page[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL] < 128).any(), (doc["doc_id"], r, c)
    assert spelled >= 8


def _draws_exactly(crop: np.ndarray, text: str, font: Font) -> bool:
    x0, y0, x1, y1 = font.bbox(text)
    if (x1 - x0, y1 - y0) != (crop.shape[1], crop.shape[0]):
        return False
    blank = Image.new("RGB", (x1 - x0, y1 - y0), (255, 255, 255))
    font.draw(blank, (-x0, -y0), text, (0, 0, 0))
    return np.array_equal(np.asarray(blank), crop)


def test_diagram_shapes_have_the_colour_asked_about():
    doc = make_document(SEED, "test", 3, "diagram", "easy")
    image, boxes = render_document(doc, (336, 336))
    for k, node in enumerate(doc.content.nodes):
        x0, y0, x1, y1 = boxes[f"node{k}"]
        assert image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == diagrams.COLORS[node.color]


@pytest.mark.parametrize("size", [(224, 224), (336, 448), (448, 336)])
def test_layouts_fit_the_page_and_do_not_overlap(size):
    for kind in KINDS:
        for tier in ("easy", "hard"):
            for index in range(6):
                _, boxes = render_document(make_document(SEED, "layout", index, kind, tier), size)
                assert boxes
                for x0, y0, x1, y1 in boxes.values():
                    assert 0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1], (kind, tier, index)
                items = list(boxes.values())
                for i, a in enumerate(items):
                    for b in items[i + 1:]:
                        assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (kind, tier, index)


def test_iter_text_covers_prompts_answers_and_printed_strings(dataset, documents):
    corpus = list(iter_text(dataset))
    n_rows = sum(len(_read_jsonl(dataset / f"{s}.jsonl")) for s in ("train", "test"))
    assert len(corpus) == 2 * n_rows + sum(len(d["text"]) for d in documents.values())
    text = "\n".join(corpus)
    receipt = next(d for d in documents.values() if d["kind"] == "receipt")
    assert receipt["content"]["vendor"] in text and "TOTAL" in corpus and DOCVQA_POST_PROMPT in text
    assert len(list(iter_text(dataset, splits=("train",)))) < len(corpus)


def test_manifest_counts_match_the_files(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["seed"] == SEED and manifest["image_size"] == [336, 336]
    for split in ("train", "test"):
        rows = _read_jsonl(dataset / f"{split}.jsonl")
        counts = manifest["splits"][split]
        assert counts["questions"] == len(rows) and counts["documents"] == len({r["doc_id"] for r in rows})
        assert counts["documents_by_kind_tier"] == {k: {"easy": 2, "hard": 2} for k in KINDS}
    assert manifest["eval"]["docvqa"] == len(_read_jsonl(dataset / "eval" / "docvqa.jsonl"))


def test_cli_writes_a_dataset(tmp_path, capsys):
    manifest = main(["--out", str(tmp_path), "--train", "4", "--test", "4", "--seed", "3",
                     "--tiers", "easy,hard", "--image-size", "280x336"])
    assert manifest["image_size"] == [280, 336] and manifest["tiers"] == ["easy", "hard"]
    assert (tmp_path / "manifest.json").is_file() and "train: 4 documents" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs", [{"tiers": ("medium",)}, {"image_size": 64}])
def test_bad_arguments_are_rejected(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, 1, 1, 0, **kwargs)


def test_render_example_writes_one_page_per_kind(tmp_path):
    for kind in KINDS:
        example = render_example(kind, tmp_path / f"{kind}.png", seed=1)
        with Image.open(tmp_path / f"{kind}.png") as image:
            assert image.size == (336, 336)
        assert example.document.kind == kind and example.document.questions
        assert all(qa.box is None or qa.box in example.boxes for qa in example.document.questions)


def test_atomic_write_never_leaves_a_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "train.jsonl"
    write_atomic(target, b"old\n")

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, b"new\n" * 1000)
    assert target.read_bytes() == b"old\n" and [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]


def test_bitmap_font_fallback_draws_text_near_the_requested_size():
    font = Font(33, freetype=False)
    page = Image.new("RGB", (400, 80), (255, 255, 255))
    box = font.draw(page, (10, 10), "TOTAL 12.50", (0, 0, 0))
    ink = np.argwhere(np.asarray(page).min(axis=2) < 128)
    assert 20 <= ink[:, 0].max() - ink[:, 0].min() + 1 <= 40  # ~33 px tall glyphs, not 11
    assert box[0] <= ink[:, 1].min() and ink[:, 1].max() < box[2] and box[1] <= ink[:, 0].min()
