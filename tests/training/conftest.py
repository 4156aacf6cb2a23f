"""Tiny assets for the training tests: a BPE tokenizer, a ~150k-parameter ZAYA1 LM, text and chat JSONL."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import transformers

transformers.logging.set_verbosity_error()

WORDS = ("the total is due on date invoice receipt amount paid tax number chart value form name "
         "address bar line axis label answer question price sum").split()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def text_rows(n: int = 64, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"doc{i}", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 24)))}
            for i in range(n)]


def chat_rows(n: int = 48, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        rows.append({"id": f"qa{i}", "messages": [
            {"role": "user", "content": [{"type": "text", "text": f"what is {a} plus {b}?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": f"the answer is {a + b}"}]},
        ]})
    return rows


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> dict:
    from zaya_vl.lm import ZayaLM
    from zaya_vl.testing import randomize_, tiny_lm_config
    from zaya_vl.tokenization import train_tokenizer

    root = tmp_path_factory.mktemp("training_assets")
    texts, chats = text_rows(), chat_rows()
    corpus = [row["text"] for row in texts] + [f"what is {a} plus {b}? the answer is {a + b}"
                                                for a in range(1, 21) for b in range(1, 21)]
    tokenizer = train_tokenizer(corpus, vocab_size=320)
    tokenizer_dir = root / "tokenizer"
    tokenizer.save_pretrained(tokenizer_dir)
    model = randomize_(ZayaLM(tiny_lm_config(vocab_size=len(tokenizer))), seed=0, std=0.1)
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return {
        "root": root,
        "tokenizer": tokenizer,
        "tokenizer_dir": tokenizer_dir,
        "model_dir": model_dir,
        "text": write_jsonl(root / "text.jsonl", texts),
        "chat": write_jsonl(root / "chat.jsonl", chats),
    }


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps process-wide singletons; each in-process training run starts from a clean slate."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_config(assets: dict, output_dir: Path, *, data: str = "text", stage: str = "pretrain", **groups) -> dict:
    """A config dict for the tiny LM; ``groups`` update its groups (``train={...}``) or top-level keys."""
    config = {
        "output_dir": str(output_dir),
        "stage": stage,
        "seed": 0,
        "model": {"path": str(assets["model_dir"])},
        "data": {"train": str(assets[data]), "seq_len": 64, "split_long_documents": data == "text"},
        "train": {"max_steps": 6, "micro_batch_size": 2, "grad_accum_steps": 1, "progress": False,
                  "tensorboard": False, "log_every": 1},
        "optim": {"lr": 3e-3, "grad_clip": 1.0},
        "schedule": {"name": "cosine", "warmup_steps": 1},
    }
    for key, value in groups.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def read_metrics(output_dir: Path) -> list[dict]:
    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(Path(folder) / "model.safetensors")


@pytest.fixture(scope="session")
def helpers():
    """The helper functions above, for test modules (conftest is not importable under importlib mode)."""
    from types import SimpleNamespace

    return SimpleNamespace(run_config=run_config, read_metrics=read_metrics, load_weights=load_weights,
                           write_jsonl=write_jsonl, text_rows=text_rows, chat_rows=chat_rows)


# -- VL ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def vl_assets(tmp_path_factory) -> dict:
    """Synthetic document-QA data (real schema, relative image paths), a tokenizer trained on its text, a tiny
    ZAYA1-VL checkpoint (LM with vision LoRA under a 2-block Qwen2.5-VL tower) and a processor."""
    from transformers import Qwen2VLImageProcessorPil

    from zaya_vl import ZayaVL, ZayaVLConfig
    from zaya_vl.data.synthetic import generate_dataset, iter_text
    from zaya_vl.processing import ZayaVLProcessor
    from zaya_vl.testing import TINY_VISION, randomize_, tiny_lm_config
    from zaya_vl.tokenization import train_tokenizer

    root = tmp_path_factory.mktemp("vl_assets")
    data = root / "synth"
    generate_dataset(data, 8, 2, seed=0, image_size=160)
    tokenizer = train_tokenizer(list(iter_text(data)) * 4 + [row["text"] for row in text_rows()], vocab_size=400)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<image_soft_token>"), ("vision_start_token_id", "<start_of_image>"),
        ("vision_end_token_id", "<end_of_image>"))}
    config = ZayaVLConfig(
        text_config=tiny_lm_config(vocab_size=len(tokenizer), vision_lora_rank_attn=4, vision_lora_rank_mlp=4),
        vision_config={**TINY_VISION, "out_hidden_size": 64}, **ids)
    model = randomize_(ZayaVL(config), seed=0, std=0.1)
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    processor = ZayaVLProcessor(image_processor=Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112),
                                tokenizer=tokenizer)
    processor.save_pretrained(model_dir)
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    # A mixed file: document questions plus text-only chats (packed), like a VL SFT mix.
    mixed = write_jsonl(data / "mixed.jsonl", rows + chat_rows(16))
    return {"root": root, "data": data / "train.jsonl", "mixed": mixed, "rows": rows, "tokenizer": tokenizer,
            "processor": processor, "model_dir": model_dir}
