"""`accelerate launch --num_processes 2` on CPU (gloo) trains exactly like one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from zaya_vl.training import config_from_dict, latest_checkpoint, train

DRIVER = Path(__file__).with_name("crash_driver.py")

STEPS = 4


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(config: dict, tmp_path: Path, name: str, *, num_processes: int = 2, script: list[str] | None = None,
           args: list[str] = (), timeout: int = 400, killed: bool = False) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes N`` of ``-m zaya_vl.training CONFIG ARGS`` (or of
    ``script CONFIG ARGS``); ``killed``: a process is expected to die (the launcher then fails)."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]  # this interpreter, not a script's shebang
    config_file = tmp_path / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1"}  # no stray accelerate config
    target = [*(script or ["-m", "zaya_vl.training"]), str(config_file), *args]
    process = subprocess.run(
        [*launcher, "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision",
         "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), *target],
        capture_output=True, text=True, timeout=timeout, env=env)
    shutil.rmtree(tmp_path / "hf_home", ignore_errors=True)
    assert (process.returncode != 0) if killed else (process.returncode == 0), process.stderr[-4000:]
    return process


def max_weight_diff(helpers, a: Path, b: Path) -> tuple[float, str]:
    weights_a, weights_b = helpers.load_weights(a), helpers.load_weights(b)
    assert weights_a.keys() == weights_b.keys()
    worst = max(weights_a, key=lambda k: (weights_a[k] - weights_b[k]).abs().max().item())
    return (weights_a[worst] - weights_b[worst]).abs().max().item(), worst


def test_two_processes_match_one_process(helpers, assets, tmp_path):
    balancing = {"kp": 0.5, "ki": 0.2}  # loads are all-reduced, so both processes steer the biases identically
    two = helpers.run_config(assets, tmp_path / "two", balancing=balancing,
                             train={"max_steps": STEPS, "micro_batch_size": 2, "grad_accum_steps": 2,
                                    "save_every": STEPS})
    launch(two, tmp_path, "two")
    info = json.loads((tmp_path / "two" / "run_info.json").read_text())
    assert info["num_processes"] == 2
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints" / f"step-{STEPS:08d}").iterdir()
                  if p.name.startswith("random_states")) == ["random_states_0.pkl", "random_states_1.pkl"]

    one = helpers.run_config(assets, tmp_path / "one", balancing=balancing,
                             train={"max_steps": STEPS, "micro_batch_size": 4, "grad_accum_steps": 2})
    train(config_from_dict(one))

    losses_two = [m["loss"] for m in helpers.read_metrics(tmp_path / "two")]
    losses_one = [m["loss"] for m in helpers.read_metrics(tmp_path / "one")]
    tokens_two = [m["tokens"] for m in helpers.read_metrics(tmp_path / "two")]
    tokens_one = [m["tokens"] for m in helpers.read_metrics(tmp_path / "one")]
    assert tokens_two == tokens_one  # the same rows make up each global batch
    weights_two = helpers.load_weights(tmp_path / "two" / "final")
    weights_one = helpers.load_weights(tmp_path / "one" / "final")
    diff, worst = max_weight_diff(helpers, tmp_path / "two" / "final", tmp_path / "one" / "final")
    loss_diff = max(abs(a - b) for a, b in zip(losses_two, losses_one))
    norms_two = [m["grad_norm"] for m in helpers.read_metrics(tmp_path / "two")]
    norms_one = [m["grad_norm"] for m in helpers.read_metrics(tmp_path / "one")]
    norm_diff = max(abs(a - b) / b for a, b in zip(norms_two, norms_one))
    print(f"2 processes vs 1: max loss diff {loss_diff:.2e}, max grad-norm rel diff {norm_diff:.2e}, "
          f"max weight diff {diff:.2e} ({worst}); losses {losses_two}")
    assert losses_one[-1] < losses_one[0]
    assert loss_diff < 1e-5
    # The gradient's scale and direction: a per-process mean instead of the global token mean would show here.
    assert norm_diff < 1e-5
    # Adam divides by sqrt(v): on near-zero gradients fp32 reduction-order noise grows to a small fraction of
    # one lr-sized step (lr 3e-3), never more.
    assert diff < 1e-4
    for k in weights_one:
        if k.endswith("balancing_biases"):
            torch.testing.assert_close(weights_two[k], weights_one[k], rtol=0, atol=1e-6)


# -- the VL model --------------------------------------------------------------------------------------------
VL_STEPS = 3


def vl_mix(vl_assets, helpers, tmp_path: Path) -> Path:
    """Document questions, text-only chats (packed) and pages with cells (the cell loss), shuffled together."""
    Image.new("RGB", (112, 112), "white").save(tmp_path / "page.png")
    cells = [{"id": f"c{k}", "messages": [
        {"role": "user", "content": [{"type": "image", "image": "page.png", "cells": ["ab  ", " 12 ", "    ", "x  y"]},
                                     {"type": "text", "text": "Read the text."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ab 12 x y"}]}]} for k in range(8)]
    images = vl_assets["data"].parent
    documents = json.loads(json.dumps(vl_assets["rows"]).replace('"images/', f'"{images}/images/'))
    return helpers.write_jsonl(tmp_path / "mix.jsonl", documents + helpers.chat_rows(24) + cells)


def vl_config(vl_assets, data: Path, output_dir: Path, **train_overrides) -> dict:
    return {
        "output_dir": str(output_dir), "stage": "sft", "seed": 0,
        "model": {"path": str(vl_assets["model_dir"])},
        "data": {"train": str(data), "seq_len": 128, "pad_to": "longest"},
        "train": {"max_steps": VL_STEPS, "micro_batch_size": 1, "grad_accum_steps": 2, "progress": False,
                  "tensorboard": False, **train_overrides},
        "optim": {"lr": 3e-3}, "schedule": {"name": "constant", "warmup_steps": 0},
        "balancing": {"kp": 0.5, "ki": 0.2}, "freeze": {"train": ["*"]},
    }


def test_vl_two_processes_match_one_process(helpers, vl_assets, tmp_path):
    data = vl_mix(vl_assets, helpers, tmp_path)
    two = vl_config(vl_assets, data, tmp_path / "two")
    two["data"]["num_workers"] = 2  # each process's rows encoded by its DataLoader workers
    launch(two, tmp_path, "two")
    train(config_from_dict(vl_config(vl_assets, data, tmp_path / "one", micro_batch_size=2)))
    two, one = helpers.read_metrics(tmp_path / "two"), helpers.read_metrics(tmp_path / "one")
    assert [m["tokens"] for m in two] == [m["tokens"] for m in one]
    assert [("cell_loss" in m) for m in two] == [("cell_loss" in m) for m in one] and any("cell_loss" in m for m in one)
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(two, one))
    cell_diff = max(abs(a["cell_loss"] - b["cell_loss"]) for a, b in zip(two, one) if "cell_loss" in b)
    diff, worst = max_weight_diff(helpers, tmp_path / "two" / "final", tmp_path / "one" / "final")
    print(f"VL, DDP 2 processes vs 1: max loss diff {loss_diff:.2e}, max cell-loss diff {cell_diff:.2e}, "
          f"max weight diff {diff:.2e} ({worst})")
    assert loss_diff < 1e-5 and cell_diff < 1e-5
    assert diff < 1e-4


# -- FSDP2 (train.fsdp: the trainer shards each decoder layer and vision block, then the root) --------------------
def _with_images(vl_assets, data: Path, process: int, micro_batches: int) -> list[bool]:
    """Per micro-batch of ``process`` (of 2, one row each): does it have images?"""
    from functools import partial

    from zaya_vl.training import RowStream, SampleEncoder, collate_rows, open_records
    from zaya_vl.training.config import DataConfig
    from zaya_vl.training.loader import MicroBatches

    config = DataConfig(train=str(data), seq_len=128, pad_to="longest", packing=False)
    records, root = open_records(config)
    encoder = SampleEncoder(vl_assets["tokenizer"], config, vl_assets["processor"], root)
    stream = RowStream(records, encoder, seq_len=128, seed=0, packing=False, defer=encoder.has_images)
    batches = iter(MicroBatches(stream, partial(collate_rows, pad_token_id=0, seq_len=128, pad_to="longest"),
                                rows_per_process=1, process_index=process, num_processes=2))
    return ["pixel_values" in next(batches)["batch"] for _ in range(micro_batches)]


def test_vl_fsdp_two_processes_match_one_process(helpers, vl_assets, tmp_path):
    data = vl_mix(vl_assets, helpers, tmp_path)
    # Covered: a micro-batch with images on one process and none on the other (the placeholder image's case).
    images = [_with_images(vl_assets, data, p, 2 * VL_STEPS) for p in (0, 1)]
    assert any(a != b for a, b in zip(*images)), images
    two = vl_config(vl_assets, data, tmp_path / "two", fsdp=True, save_every=VL_STEPS)
    one = vl_config(vl_assets, data, tmp_path / "one", micro_batch_size=2)
    for config in (two, one):
        config["data"]["packing"] = False  # text-only rows of their own, so some micro-batches have no image
    launch(two, tmp_path, "two")
    checkpoint = tmp_path / "two" / "checkpoints" / f"step-{VL_STEPS:08d}"
    assert sorted(p.name for p in (checkpoint / "sharded").iterdir()) == [".metadata", "__0_0.distcp",
                                                                         "__1_0.distcp"]
    train(config_from_dict(one))
    two, one = helpers.read_metrics(tmp_path / "two"), helpers.read_metrics(tmp_path / "one")
    assert [m["tokens"] for m in two] == [m["tokens"] for m in one]
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(two, one))
    norm_diff = max(abs(a["grad_norm"] - b["grad_norm"]) / b["grad_norm"] for a, b in zip(two, one))
    diff, worst = max_weight_diff(helpers, tmp_path / "two" / "final", tmp_path / "one" / "final")
    print(f"VL, FSDP2 2 processes vs 1: max loss diff {loss_diff:.2e}, grad-norm rel diff {norm_diff:.2e}, "
          f"max weight diff {diff:.2e} ({worst})")
    assert loss_diff < 1e-5 and norm_diff < 1e-5
    assert diff < 1e-4


@pytest.mark.slow
def test_vl_fsdp_kill_and_resume_is_exact(helpers, vl_assets, tmp_path):
    """Under 2 processes with FSDP2 (gradient checkpointing, DataLoader workers): 4 steps straight == 2 steps, SIGKILL
    right after the step-2 checkpoint, --resume. Every weight bit-identical, the same loss curve."""
    data = vl_mix(vl_assets, helpers, tmp_path)
    settings = {"max_steps": 4, "fsdp": True, "save_every": 2, "keep_checkpoints": 3}
    straight = vl_config(vl_assets, data, tmp_path / "straight", **settings)
    straight["model"]["gradient_checkpointing"] = True
    straight["data"]["num_workers"] = 2  # workers encode ahead: the checkpoint holds the state of the trained batch
    launch(straight, tmp_path, "straight")
    resumed = {**straight, "output_dir": str(tmp_path / "resumed")}
    launch(resumed, tmp_path, "killed", script=[str(DRIVER)], args=["after_save", "2"], killed=True)
    assert latest_checkpoint(tmp_path / "resumed" / "checkpoints").name == "step-00000002"
    assert not (tmp_path / "resumed" / "final").exists()
    launch(resumed, tmp_path, "resumed", args=["--resume"])
    losses = [m["loss"] for m in helpers.read_metrics(tmp_path / "resumed")]
    assert losses == [m["loss"] for m in helpers.read_metrics(tmp_path / "straight")] and len(losses) == 4
    diff, worst = max_weight_diff(helpers, tmp_path / "resumed" / "final", tmp_path / "straight" / "final")
    print(f"VL, FSDP2 2 processes: kill at step 2 + --resume vs straight: max weight diff {diff} ({worst})")
    assert diff == 0.0


@pytest.mark.slow
def test_vl_fsdp_bf16_frozen_weights_checkpointing_chunked_loss(helpers, vl_assets, tmp_path):
    """bf16 frozen weights (trainable ones fp32), bf16 autocast, gradient checkpointing and a chunked loss of 16
    tokens under FSDP2 on 2 processes train like one process with the same settings."""
    data = vl_mix(vl_assets, helpers, tmp_path)
    runs = {}
    for name, processes in (("two", 2), ("one", 1)):
        config = vl_config(vl_assets, data, tmp_path / name, fsdp=True, mixed_precision="bf16", loss_chunk_size=16,
                           micro_batch_size=2 // processes)
        config["model"].update(dtype="bfloat16", gradient_checkpointing=True)
        config["freeze"] = {"train": ["model.vision_tower.merger.*", "*.vision_adapters.*",
                                      "model.language_model.layers.*.self_attn.*"]}
        config["stage"] = "align"
        if processes == 2:
            launch(config, tmp_path, name)
        else:
            train(config_from_dict(config))
        runs[name] = helpers.read_metrics(tmp_path / name)
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(runs["two"], runs["one"]))
    diff, worst = max_weight_diff(helpers, tmp_path / "two" / "final", tmp_path / "one" / "final")
    first_diff = abs(runs["two"][0]["loss"] - runs["one"][0]["loss"])
    print(f"VL, FSDP2 bf16 frozen + checkpointing + chunked loss, 2 processes vs 1: first-step loss diff "
          f"{first_diff:.2e}, max loss diff {loss_diff:.2e}, max weight diff {diff:.2e} ({worst})")
    expert = "model.language_model.layers.0.mlp.experts.gate_up_proj"  # frozen: stays the bf16 initial weight
    initial = helpers.load_weights(vl_assets["model_dir"])[expert].to(torch.bfloat16)
    assert torch.equal(helpers.load_weights(tmp_path / "two" / "final")[expert], initial)
    assert runs["one"][-1]["loss"] < runs["one"][0]["loss"]
    # bf16 autocast: another reduction order moves results by bf16 rounding, and Adam turns a sign change of a
    # near-zero gradient into a full lr-sized step; at most every step flipped: 2 · lr (3e-3) · steps.
    assert first_diff < 1e-3 and loss_diff < 5e-3 and diff < 2 * 3e-3 * VL_STEPS
