import pytest
import torch

from zaya_vl.training import LRMultiplier, StepSchedule, build_scheduler
from zaya_vl.training.config import ScheduleConfig


def test_warmup_then_cosine_to_the_floor():
    f = LRMultiplier("cosine", max_steps=11, warmup_steps=2, min_lr_ratio=0.1)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert f(10) == pytest.approx(0.1)
    values = [f(s) for s in range(1, 11)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_wsd_is_flat_then_decays_over_the_last_fraction():
    f = LRMultiplier("wsd", max_steps=100, warmup_steps=10, min_lr_ratio=0.0, decay_fraction=0.2)
    assert f(4) == pytest.approx(0.5)
    assert all(f(s) == 1.0 for s in range(10, 80))
    assert f(80) == pytest.approx(1 - 1 / 20)
    assert f(89) == pytest.approx(0.5)
    assert f(99) == pytest.approx(0.0)
    sqrt = LRMultiplier("wsd", max_steps=100, decay_fraction=0.2, decay_shape="sqrt", min_lr_ratio=0.0)
    assert sqrt(84) == pytest.approx(1 - 0.25 ** 0.5)


def test_constant_and_bad_names():
    assert [LRMultiplier("constant", 10, warmup_steps=4)(s) for s in (0, 3, 9)] == [0.25, 1.0, 1.0]
    with pytest.raises(ValueError, match="unknown schedule"):
        LRMultiplier("linear", 10)


def _optimizer(lr: float = 3e-3) -> torch.optim.Optimizer:
    params = [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))]
    return torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}], lr=lr)


def _step(optimizer, scheduler) -> None:
    optimizer.step()
    scheduler.step()


def test_step_schedule_sets_what_torch_lambda_lr_sets():
    """The learning rate of every step, compared with torch's LambdaLR over the same multiplier, bit for bit."""
    config = ScheduleConfig(name="cosine", warmup_steps=3, min_lr_ratio=0.1)
    multiplier = LRMultiplier("cosine", 12, warmup_steps=3, min_lr_ratio=0.1)
    ours_optimizer, torch_optimizer = _optimizer(), _optimizer()
    ours = build_scheduler(ours_optimizer, config, 12)
    reference = torch.optim.lr_scheduler.LambdaLR(torch_optimizer, multiplier)
    for _ in range(12):
        assert ours.get_last_lr() == reference.get_last_lr()
        assert [g["lr"] for g in ours_optimizer.param_groups] == [g["lr"] for g in torch_optimizer.param_groups]
        _step(ours_optimizer, ours)
        _step(torch_optimizer, reference)


@pytest.mark.parametrize("saved_by", ["step_schedule", "lambda_lr"])
def test_loading_a_state_sets_the_rates_of_its_step(saved_by):
    """A resumed schedule (from our state or from a LambdaLR checkpoint) sets the learning rate of the saved step
    under the loading run's config, even over the rates an optimizer state brings back."""
    multiplier = LRMultiplier("wsd", 10, warmup_steps=2, min_lr_ratio=0.0, decay_fraction=0.5)
    optimizer = _optimizer(lr=2e-3)
    saved = (StepSchedule(optimizer, multiplier) if saved_by == "step_schedule"
             else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: multiplier(step)))
    for _ in range(6):
        _step(optimizer, saved)
    state, optimizer_state = saved.state_dict(), optimizer.state_dict()

    extended = LRMultiplier("wsd", 20, warmup_steps=2, min_lr_ratio=0.0, decay_fraction=0.5)  # max_steps 10 → 20
    resumed_optimizer = _optimizer(lr=9.0)  # the saved base rate wins, as it did with LambdaLR
    resumed = StepSchedule(resumed_optimizer, extended)
    resumed.load_state_dict(state)
    assert resumed.last_epoch == 6
    assert [g["lr"] for g in resumed_optimizer.param_groups] == [2e-3 * extended(6)] * 2 == [2e-3] * 2
    resumed_optimizer.load_state_dict(optimizer_state)  # brings back the saved run's rate at step 6
    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(2e-3 * multiplier(6))
    resumed.set_optimizer_lr()
    assert [g["lr"] for g in resumed_optimizer.param_groups] == [2e-3 * extended(6)] * 2
    _step(resumed_optimizer, resumed)
    assert resumed.get_last_lr() == [2e-3 * extended(7)] * 2
    assert set(resumed.state_dict()) == {"last_epoch", "base_lrs"}  # no multiplier: the config brings it
