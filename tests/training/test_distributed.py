"""`accelerate launch --num_processes 2` on CPU (gloo) trains exactly like one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from zaya_vl.training import config_from_dict, train

STEPS = 4


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_match_one_process(helpers, assets, tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    launcher = [str(accelerate), "launch"] if accelerate.exists() else [sys.executable, "-m", "accelerate.commands.launch"]
    balancing = {"kp": 0.5, "ki": 0.2}  # loads are all-reduced, so both processes steer the biases identically
    two = helpers.run_config(assets, tmp_path / "two", balancing=balancing,
                             train={"max_steps": STEPS, "micro_batch_size": 2, "grad_accum_steps": 2,
                                    "save_every": STEPS})
    config_file = tmp_path / "two.yaml"
    config_file.write_text(yaml.safe_dump(two))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1"}  # no stray accelerate config
    process = subprocess.run(
        [*launcher, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", "zaya_vl.training", str(config_file)],
        capture_output=True, text=True, timeout=400, env=env)
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-4000:]
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
    worst = max(weights_one, key=lambda k: (weights_two[k] - weights_one[k]).abs().max().item())
    diff = (weights_two[worst] - weights_one[worst]).abs().max().item()
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
    shutil.rmtree(tmp_path / "hf_home", ignore_errors=True)
