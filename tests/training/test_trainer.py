"""The training loop on the tiny LM: loss falls, frozen weights stay put, batching is exact, outputs load."""

from __future__ import annotations

import json

import pytest
import torch

from zaya_vl.lm import ZayaLM
from zaya_vl.training import ConfigError, config_from_dict, train


def _train(helpers, assets, path, **groups):
    return train(config_from_dict(helpers.run_config(assets, path, **groups)))


@pytest.mark.parametrize("stage,data", [("pretrain", "text"), ("sft", "chat")])
def test_loss_falls(helpers, assets, tmp_path, stage, data):
    result = _train(helpers, assets, tmp_path / "run", stage=stage, data=data,
                    train={"max_steps": 12}, optim={"lr": 1e-2})
    losses = [m["loss"] for m in helpers.read_metrics(tmp_path / "run")]
    assert len(losses) == 12 and result.steps == 12
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    print(f"{stage}: loss {first:.3f} -> {last:.3f}")
    assert last < 0.75 * first


def test_sft_trains_only_on_assistant_tokens(helpers, assets, tmp_path):
    """With loss_on=assistant the counted tokens are the answers (+ <end_of_turn>), far fewer than all."""
    counts = {}
    for loss_on in ("assistant", "all"):
        config = helpers.run_config(assets, tmp_path / loss_on, stage="sft", data="chat", train={"max_steps": 1})
        config["data"]["loss_on"] = loss_on
        train(config_from_dict(config))
        counts[loss_on] = helpers.read_metrics(tmp_path / loss_on)[0]["tokens"]
    assert 0 < counts["assistant"] < counts["all"] / 2


def test_frozen_parameters_are_bit_identical(helpers, assets, tmp_path):
    frozen = ["model.embed_tokens.*", "model.layers.0.*", "model.layers.1.mlp.experts.*"]
    result = _train(helpers, assets, tmp_path / "run", freeze={"freeze": frozen}, train={"max_steps": 4})
    before = ZayaLM.from_pretrained(assets["model_dir"]).state_dict()
    after = ZayaLM.from_pretrained(result.final_dir).state_dict()
    changed_frozen, changed_trained = [], []
    for name, tensor in before.items():
        is_frozen = name.startswith(("model.embed_tokens.", "lm_head.", "model.layers.0.",
                                     "model.layers.1.mlp.experts."))
        if "balancing_biases" in name:
            continue
        (changed_frozen if is_frozen else changed_trained).append(not torch.equal(tensor, after[name]))
    assert not any(changed_frozen)
    assert all(changed_trained)
    # The balancing controller steers only layers whose router trains: layer 0's routing is untouched.
    biases = [(before[f"model.layers.{i}.mlp.gate.balancing_biases"],
               after[f"model.layers.{i}.mlp.gate.balancing_biases"]) for i in range(3)]
    assert torch.equal(*biases[0])
    assert not torch.equal(*biases[1]) and not torch.equal(*biases[2])
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["trainable_parameters"] == result.trainable_parameters < info["total_parameters"]
    expected = sum(t.numel() for n, t in before.items() if n.startswith("model.") and "balancing_biases" not in n
                   and not n.startswith(("model.embed_tokens.", "model.layers.0.", "model.layers.1.mlp.experts.")))
    assert result.trainable_parameters == expected


def test_gradient_accumulation_equals_a_bigger_micro_batch(helpers, assets, tmp_path):
    """Loss = sum over the global batch / global token count: 1 × 4 rows == 2 accumulated × 2 rows."""
    big = _train(helpers, assets, tmp_path / "big", train={"max_steps": 3, "micro_batch_size": 4})
    accumulated = _train(helpers, assets, tmp_path / "acc", train={"max_steps": 3, "micro_batch_size": 2,
                                                                  "grad_accum_steps": 2})
    big_losses = [m["loss"] for m in helpers.read_metrics(big.output_dir)]
    acc_losses = [m["loss"] for m in helpers.read_metrics(accumulated.output_dir)]
    torch.testing.assert_close(torch.tensor(acc_losses), torch.tensor(big_losses), rtol=0, atol=1e-5)
    weights_big, weights_acc = helpers.load_weights(big.final_dir), helpers.load_weights(accumulated.final_dir)
    diff = max((weights_big[k] - weights_acc[k]).abs().max().item() for k in weights_big)
    print(f"accumulation vs big batch: max weight diff {diff:.2e}")
    assert diff < 1e-5


def test_final_model_loads_and_reproduces_training_weights(helpers, assets, tmp_path):
    result = _train(helpers, assets, tmp_path / "run", train={"max_steps": 2, "save_every": 2})
    model = ZayaLM.from_pretrained(result.final_dir)
    checkpoint = helpers.load_weights(tmp_path / "run" / "checkpoints" / "step-00000002")
    for name, tensor in checkpoint.items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert (result.final_dir / "tokenizer.json").is_file()


def test_tensorboard_and_metrics_are_written(helpers, assets, tmp_path):
    pytest.importorskip("tensorboard")
    _train(helpers, assets, tmp_path / "run", train={"max_steps": 2, "tensorboard": True})
    events = list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = set()
    for event_file in events:
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        scalars |= set(accumulator.Tags()["scalars"])
    assert {"loss", "lr", "grad_norm", "moe/load_entropy", "moe/max_load"} <= scalars
    metrics = helpers.read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == [1, 2]


def test_refuses_to_overwrite_a_run_without_resume(helpers, assets, tmp_path):
    _train(helpers, assets, tmp_path / "run", train={"max_steps": 1, "save_every": 1})
    with pytest.raises(ConfigError, match="--resume"):
        _train(helpers, assets, tmp_path / "run", train={"max_steps": 2, "save_every": 1})


def test_gradients_are_clipped_to_max_norm(helpers, assets, tmp_path):
    """Adam's first moment after one step is (1 - beta1) × the gradient it was given: its global norm shows
    whether the gradient was clipped. The logged grad_norm is the norm before clipping."""
    norms = {}
    for name, clip in (("clipped", 0.05), ("free", None)):
        run = _train(helpers, assets, tmp_path / name, train={"max_steps": 1, "save_every": 1},
                     optim={"grad_clip": clip})
        state = torch.load(run.output_dir / "checkpoints" / "step-00000001" / "optimizer.bin", weights_only=False)
        moments = [s["exp_avg"] for s in state["state"].values()]
        norms[name] = (torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(m) for m in moments]))
                       .item() / (1 - 0.9), helpers.read_metrics(run.output_dir)[0]["grad_norm"])
    logged = norms["free"][1]
    assert logged > 0.5 and norms["clipped"][1] == pytest.approx(logged, rel=1e-5)
    assert norms["free"][0] == pytest.approx(logged, rel=1e-4)
    assert norms["clipped"][0] == pytest.approx(0.05, rel=1e-4)


def test_gradient_checkpointing_gives_the_same_training(helpers, assets, tmp_path):
    plain = _train(helpers, assets, tmp_path / "plain", train={"max_steps": 3})
    config = helpers.run_config(assets, tmp_path / "ckpt", train={"max_steps": 3})
    config["model"]["gradient_checkpointing"] = True
    checkpointed = train(config_from_dict(config))
    losses = [[m["loss"] for m in helpers.read_metrics(run.output_dir)] for run in (plain, checkpointed)]
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=0, atol=1e-6)
    a, b = helpers.load_weights(plain.final_dir), helpers.load_weights(checkpointed.final_dir)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_bf16_frozen_weights_with_fp32_trainable_ones(helpers, assets, tmp_path):
    """model.dtype bfloat16 + bf16 autocast (on CPU here): frozen weights stay bf16, trainable ones train in fp32."""
    config = helpers.run_config(assets, tmp_path / "run", train={"max_steps": 6, "mixed_precision": "bf16"},
                                freeze={"freeze": ["model.layers.0.*", "model.embed_tokens.*"]}, optim={"lr": 1e-2})
    config["model"]["dtype"] = "bfloat16"
    result = train(config_from_dict(config))
    losses = [m["loss"] for m in helpers.read_metrics(result.output_dir)]
    assert losses[-1] < losses[0]
    saved = helpers.load_weights(result.final_dir)
    assert saved["model.layers.0.self_attn.o_proj.weight"].dtype == torch.bfloat16
    assert saved["model.layers.1.self_attn.o_proj.weight"].dtype == torch.float32
    with pytest.raises(ConfigError, match="mixed_precision"):
        config["train"]["mixed_precision"] = "no"
        config["output_dir"] = str(tmp_path / "again")
        train(config_from_dict(config))


def test_a_run_that_accelerate_cannot_set_up_in_this_process_is_refused_with_the_keys(helpers, assets, tmp_path):
    """accelerate keeps its settings per process: after bf16, a run without mixed precision is a clear error."""
    from accelerate import Accelerator

    Accelerator(mixed_precision="bf16", cpu=True)
    config = helpers.run_config(assets, tmp_path / "run", train={"max_steps": 1, "mixed_precision": "no"})
    with pytest.raises(ConfigError, match=r"train.mixed_precision / train.cpu: an earlier run in this process"):
        train(config_from_dict(config))
    assert not (tmp_path / "run").exists()  # refused before anything was written
