"""Exact resume after a SIGKILL, and checkpoints that never look complete when they are not."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from zaya_vl.training import config_from_dict, is_complete, latest_checkpoint, train

DRIVER = Path(__file__).with_name("crash_driver.py")
STEPS = 6


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _config(helpers, assets, path, **train_overrides):
    # grad accumulation and balancing are on, so their state (accelerate's counter, the controller) is covered.
    return helpers.run_config(assets, path, train={"max_steps": STEPS, "grad_accum_steps": 2, **train_overrides},
                              balancing={"kp": 0.5, "ki": 0.2, "kd": 0.1})


def _run_killed(config: dict, tmp_path: Path, mode: str, step: int) -> subprocess.CompletedProcess:
    config_file = tmp_path / f"{mode}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    process = subprocess.run([sys.executable, str(DRIVER), str(config_file), mode, str(step)],
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
    return process


@pytest.fixture(scope="module")
def straight_run(assets, helpers, tmp_path_factory):
    """The reference: STEPS steps without interruption."""
    _reset_accelerate()
    output = tmp_path_factory.mktemp("straight") / "run"
    result = train(config_from_dict(_config(helpers, assets, output)))
    _reset_accelerate()
    return {"losses": [m["loss"] for m in helpers.read_metrics(output)],
            "weights": helpers.load_weights(result.final_dir)}


def _assert_same_run(helpers, straight, output: Path):
    losses = [m["loss"] for m in helpers.read_metrics(output)]
    assert [m["step"] for m in helpers.read_metrics(output)] == list(range(1, STEPS + 1))
    assert losses == straight["losses"]  # bit-identical loss curve
    weights = helpers.load_weights(output / "final")
    assert weights.keys() == straight["weights"].keys()
    for name, tensor in straight["weights"].items():
        assert torch.equal(weights[name], tensor), name


def test_resume_after_kill_is_exact(helpers, assets, tmp_path, straight_run):
    output = tmp_path / "run"
    config = _config(helpers, assets, output, save_every=STEPS // 2)
    _run_killed(config, tmp_path, "after_save", STEPS // 2)
    assert latest_checkpoint(output / "checkpoints").name == f"step-{STEPS // 2:08d}"
    assert not (output / "final").exists()

    result = train(config_from_dict(config), resume=True)
    assert result.resumed_from.name == f"step-{STEPS // 2:08d}" and result.steps == STEPS
    assert len(result.metrics) == STEPS // 2  # only the second half ran here
    _assert_same_run(helpers, straight_run, output)
    print(f"resume: {STEPS} straight == {STEPS // 2} + kill + {STEPS // 2}; losses {straight_run['losses']}")


@pytest.mark.parametrize("mode", ["in_save_state", "before_rename"])
def test_kill_mid_save_leaves_no_complete_looking_checkpoint(helpers, assets, tmp_path, straight_run, mode):
    output = tmp_path / "run"
    config = _config(helpers, assets, output, save_every=2)
    _run_killed(config, tmp_path, mode, 4)
    root = output / "checkpoints"
    names = sorted(p.name for p in root.iterdir())
    assert names == [".tmp-step-00000004", "step-00000002"], names
    partial = root / ".tmp-step-00000004"
    assert not is_complete(partial)
    if mode == "in_save_state":
        assert not (partial / "COMPLETE").exists()
        with pytest.raises(Exception):
            torch.load(partial / "optimizer.bin", weights_only=False)  # the kill really cut a file short
    else:
        assert (partial / "COMPLETE").exists()  # written, but the folder was never renamed into place
    assert latest_checkpoint(root).name == "step-00000002"

    result = train(config_from_dict(config), resume=True)
    assert result.resumed_from.name == "step-00000002"
    assert sorted(p.name for p in root.iterdir()) == ["step-00000004", "step-00000006"]  # leftovers cleaned
    _assert_same_run(helpers, straight_run, output)


def test_is_complete_rejects_tampered_checkpoints(helpers, assets, tmp_path):
    output = tmp_path / "run"
    train(config_from_dict(_config(helpers, assets, output, max_steps=1, save_every=1)))
    checkpoint = output / "checkpoints" / "step-00000001"
    assert is_complete(checkpoint)
    optimizer = checkpoint / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:100])  # truncated after the fact
    assert not is_complete(checkpoint)
    assert latest_checkpoint(output / "checkpoints") is None
