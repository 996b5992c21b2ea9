"""The per-epoch learning-rate schedules against hand-computed values."""
import argparse
import math

import pytest

from engine import config
from engine.train.schedules import LRSchedule


def make(kind="step", lr=0.1, epochs=200, **kw):
    """The defaults of LDAM-DRW's schedule (warm-up 5, x0.01 at 160, x1e-4 at 180) unless overridden."""
    return LRSchedule(kind, lr, epochs, **kw)


@pytest.mark.parametrize("epoch,lr", [(0, 0.02), (1, 0.04), (4, 0.1), (5, 0.1), (159, 0.1), (160, 0.001),
                                      (179, 0.001), (180, 1e-5), (199, 1e-5)])
def test_ldam_step_schedule(epoch, lr):
    # LDAM-DRW / imbalanced-semi-self (corrected order): warm-up lr*(e+1)/5, x0.01 from 160, x1e-4 from 180.
    assert make()(epoch) == pytest.approx(lr)


@pytest.mark.parametrize("epoch,factor", [(0, 1 / 3 * 0.8 + 0.2), (3, 1 / 3 * 0.2 + 0.8), (4, 1.0), (118, 1.0),
                                          (119, 0.01), (158, 0.01), (159, 1e-4)])
def test_lade_warmup_multistep(epoch, factor):
    # LADE's WarmupMultiStepLR(f=1/3, W=5, milestones 120/160, gamma 0.01), stepped at the start of each epoch:
    # epoch e (0-indexed) runs at last_epoch = e + 1, i.e. factor f*(1 - a) + a with a = (e + 1)/5 while e + 1 < 5.
    a = make(milestones=[119, 159], lr=0.2, warmup_factor=1 / 3)
    assert a(epoch) == pytest.approx(0.2 * factor)


def test_warmup_factor_zero_is_the_ldam_warmup_and_range_is_checked():
    assert [make(warmup_factor=0.0)(e) for e in range(5)] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    with pytest.raises(ValueError, match="--warmup_factor must be in"):
        make(warmup_factor=1.5)


def test_lade_cifar_schedule():
    a = make(milestones=[120, 160], lr=0.2)
    assert a(119) == pytest.approx(0.2)
    assert a(120) == pytest.approx(0.002)
    assert a(160) == pytest.approx(0.2e-4)


def test_cosine_schedule():
    a = make("cosine", warmup_epochs=0, epochs=10)
    assert a(0) == pytest.approx(0.1)
    assert a(5) == pytest.approx(0.05)
    assert a(9) == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.9)))


def test_schedule_validation():
    with pytest.raises(ValueError, match="same length"):
        make(milestones=[10], lr_factors=[0.1, 0.01])
    with pytest.raises(ValueError, match="increasing"):
        make(milestones=[20, 10])
    with pytest.raises(ValueError, match="--warmup_epochs must be >= 0"):
        make(warmup_epochs=-1)
    with pytest.raises(ValueError, match="unknown --lr_schedule 'linear'; choose one of: cosine, step"):
        make("linear")


def parse(argv=(), **script_defaults):
    p = argparse.ArgumentParser()
    config.add_optim_args(p, **script_defaults)
    return p.parse_args(list(argv))


def test_schedule_flags_are_derived_from_the_schedule_and_build_it():
    a = parse()
    assert (a.lr_schedule, a.warmup_epochs, a.warmup_factor, a.milestones, a.lr_factors) == \
        ("step", 5, 0.0, [160, 180], [0.01, 0.0001])
    assert config.schedule_from_args(a) == make()
    # a script's own defaults (pretrain_moco) and flags on the command line
    b = parse(["--milestones", "30", "60", "--lr", "0.5"], schedule="cosine", warmup_epochs=0,
              milestones=(120, 160), lr_factors=(0.1, 0.01))
    assert config.schedule_from_args(b) == LRSchedule("cosine", 0.5, 200, warmup_epochs=0, milestones=(30, 60),
                                                      lr_factors=(0.1, 0.01))
    with pytest.raises(TypeError, match="no hyper-parameter flag"):
        parse(warmup=3)
