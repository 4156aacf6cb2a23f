"""An output folder is not silently replaced, not shared by two live runs, and a checkpoint cannot run code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zaya_vl.fileio import LOCK_NAME
from zaya_vl.training import config_from_dict, train
from zaya_vl.training.config import ConfigError


class _RunsCode:
    """Unpickling this writes a file: a stand-in for the code a hostile pickle would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_resume_refuses_a_balancing_state_that_would_run_code(helpers, assets, tmp_path):
    config = helpers.run_config(assets, tmp_path / "run", train={"max_steps": 1, "save_every": 1},
                                balancing={"kp": 0.5, "ki": 0.2, "kd": 0.1})
    train(config_from_dict(config))
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000001"
    balancing_file = checkpoint / "balancing.pt"
    state = torch.load(balancing_file, weights_only=True)  # what we write loads safely
    marker = tmp_path / "pwned"
    torch.save({**state, "updates": _RunsCode(marker)}, balancing_file)
    complete = json.loads((checkpoint / "COMPLETE").read_text())  # a hostile file comes with a matching manifest
    complete["files"]["balancing.pt"] = balancing_file.stat().st_size
    (checkpoint / "COMPLETE").write_text(json.dumps(complete))

    config["train"]["max_steps"] = 2
    with pytest.raises(ConfigError, match="balancing.pt: refused"):
        train(config_from_dict(config), resume=True)
    assert not marker.exists()


def test_fresh_run_into_a_finished_folder_needs_resume_or_overwrite(helpers, assets, tmp_path):
    # No save_every: no checkpoint, only final/ and metrics.jsonl, which a rerun used to replace silently.
    config = helpers.run_config(assets, tmp_path / "run", train={"max_steps": 1})
    first = train(config_from_dict(config))
    before = (tmp_path / "run" / "final" / "model.safetensors").read_bytes()
    for resume in (False, True):  # --resume with nothing to resume from starts fresh: same refusal
        with pytest.raises(ConfigError, match=r"holds an earlier run \(final, metrics.jsonl\).*--overwrite"):
            train(config_from_dict(config), resume=resume)
    assert (tmp_path / "run" / "final" / "model.safetensors").read_bytes() == before
    assert len(helpers.read_metrics(tmp_path / "run")) == 1

    # Killed before its first checkpoint (metrics, no final/): --resume starts it again, a plain start is refused.
    shutil.rmtree(tmp_path / "run" / "final")
    with pytest.raises(ConfigError, match=r"holds an earlier run \(metrics.jsonl\)"):
        train(config_from_dict(config))
    assert train(config_from_dict(config), resume=True).steps == 1

    config["train"]["max_steps"] = 2
    result = train(config_from_dict(config), overwrite=True)
    assert result.steps == 2 and [m["step"] for m in helpers.read_metrics(tmp_path / "run")] == [1, 2]
    assert first.final_dir == result.final_dir and not (tmp_path / "run" / LOCK_NAME).exists()


def test_second_live_training_run_into_one_folder_is_refused(helpers, assets, tmp_path):
    output = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from zaya_vl.fileio import OutputLock; "
                               "OutputLock(sys.argv[1], 'zaya-vl train').acquire(); print('locked', flush=True); "
                               "sys.stdin.readline()", str(output)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        config = helpers.run_config(assets, output, train={"max_steps": 1})
        with pytest.raises(ConfigError, match=rf"in use by zaya-vl train \(pid {holder.pid}"):
            train(config_from_dict(config))
        assert sorted(p.name for p in output.iterdir()) == [LOCK_NAME]  # nothing written next to the other run
        assert json.loads((output / LOCK_NAME).read_text())["pid"] == holder.pid
    finally:
        holder.communicate("\n", timeout=60)
    assert train(config_from_dict(config)).steps == 1  # free again once the holder exits
    assert os.listdir(output).count(LOCK_NAME) == 0
