import pytest

from zaya_vl.training import LRMultiplier


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
