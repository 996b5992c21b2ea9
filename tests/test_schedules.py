"""The per-epoch learning-rate schedules against hand-computed values."""
import argparse
import math

import pytest

from engine import schedules


def make_args(**kw):
    p = argparse.ArgumentParser()
    schedules.add_schedule_args(p)
    a = p.parse_args([])
    a.lr, a.epochs = 0.1, 200
    for k, v in kw.items():
        setattr(a, k, v)
    return a


@pytest.mark.parametrize("epoch,lr", [(0, 0.02), (1, 0.04), (4, 0.1), (5, 0.1), (159, 0.1), (160, 0.001),
                                      (179, 0.001), (180, 1e-5), (199, 1e-5)])
def test_ldam_step_schedule(epoch, lr):
    # LDAM-DRW / imbalanced-semi-self (corrected order): warm-up lr*(e+1)/5, x0.01 from 160, x1e-4 from 180.
    assert schedules.lr_at(make_args(), epoch) == pytest.approx(lr)


@pytest.mark.parametrize("epoch,factor", [(0, 1 / 3 * 0.8 + 0.2), (3, 1 / 3 * 0.2 + 0.8), (4, 1.0), (118, 1.0),
                                          (119, 0.01), (158, 0.01), (159, 1e-4)])
def test_lade_warmup_multistep(epoch, factor):
    # LADE's WarmupMultiStepLR(f=1/3, W=5, milestones 120/160, gamma 0.01), stepped at the start of each epoch:
    # epoch e (0-indexed) runs at last_epoch = e + 1, i.e. factor f*(1 - a) + a with a = (e + 1)/5 while e + 1 < 5.
    a = make_args(milestones=[119, 159], lr=0.2, warmup_factor=1 / 3)
    assert schedules.lr_at(a, epoch) == pytest.approx(0.2 * factor)


def test_warmup_factor_zero_is_the_ldam_warmup_and_range_is_checked():
    assert [schedules.lr_at(make_args(warmup_factor=0.0), e) for e in range(5)] == \
        pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    with pytest.raises(ValueError, match="--warmup_factor must be in"):
        schedules.validate_schedule(make_args(warmup_factor=1.5))


def test_lade_cifar_schedule():
    a = make_args(milestones=[120, 160], lr=0.2)
    assert schedules.lr_at(a, 119) == pytest.approx(0.2)
    assert schedules.lr_at(a, 120) == pytest.approx(0.002)
    assert schedules.lr_at(a, 160) == pytest.approx(0.2e-4)


def test_cosine_schedule():
    a = make_args(lr_schedule="cosine", warmup_epochs=0, epochs=10)
    assert schedules.lr_at(a, 0) == pytest.approx(0.1)
    assert schedules.lr_at(a, 5) == pytest.approx(0.05)
    assert schedules.lr_at(a, 9) == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.9)))


def test_schedule_validation():
    with pytest.raises(ValueError, match="same length"):
        schedules.validate_schedule(make_args(milestones=[10], lr_factors=[0.1, 0.01]))
    with pytest.raises(ValueError, match="increasing"):
        schedules.validate_schedule(make_args(milestones=[20, 10]))
