"""Schedules as functions of training progress, each checked against hand-computed values."""

import pytest

from snn_controller.train.schedules import (SlopeSchedule, SlopeScheduler, bc_weight, curriculum_stage,
                                      guide_steps)


def test_fixed_and_interval_slopes():
    fixed = SlopeScheduler(SlopeSchedule(kind="fixed", initial=5.0, minimum=1.0, maximum=100.0))
    fixed.observe(400.0)
    assert [fixed.slope(p) for p in (0.0, 0.5, 1.0)] == [5.0, 5.0, 5.0]
    interval = SlopeScheduler(SlopeSchedule(kind="interval", initial=2.0, maximum=22.0, intervals=4))
    # k0 + (kmax - k0) * floor(p * n) / n
    assert [interval.slope(p) for p in (0.0, 0.24, 0.25, 0.6, 0.99, 1.0)] == [2.0, 2.0, 7.0, 12.0, 17.0, 22.0]


def test_adaptive_slope_follows_eq7_on_a_normalised_score():
    s = SlopeScheduler(SlopeSchedule(kind="adaptive", initial=2.0, minimum=1.0, maximum=101.0, window=3,
                                     score_min=0.0, score_max=500.0))
    assert s.slope(0.0) == 2.0, "before any evaluation: the initial slope"
    scores = [100.0, 200.0, 400.0, 400.0]
    r = [x / 500 for x in scores]  # 0.2, 0.4, 0.8, 0.8
    terms = [0.5 * r[0], 0.5 * r[1] + 0.5 * (r[1] - r[0]), 0.5 * r[2] + 0.5 * (r[2] - r[1]),
             0.5 * r[3] + 0.5 * (r[3] - r[2])]  # first difference of the first score is 0
    for i, score in enumerate(scores):
        k = s.observe(score)
        window = terms[max(0, i - 2): i + 1]
        assert k == pytest.approx(1.0 + sum(window) / len(window) * 100.0)
        assert s.slope(0.5) == k


def test_adaptive_slope_is_clamped():
    s = SlopeScheduler(SlopeSchedule(kind="adaptive", initial=2.0, minimum=1.0, maximum=100.0, window=1))
    assert s.observe(-1000.0) == 1.0  # raw returns below the range: the shallowest slope
    assert s.observe(1e6) == 100.0  # r = 1, r' = 1: term 1 -> the steepest slope
    # a collapse from the top: term 0.5 * 0 + 0.5 * (0 - 1) = -0.5 maps below the minimum -> clamped
    assert s.observe(0.0) == 1.0


def test_authors_variant():
    s = SlopeScheduler(SlopeSchedule(kind="authors", initial=2.0, minimum=1.0, maximum=20.0, momentum=0.5,
                                     score_max=500.0))
    # target = 0.2 (k0 + s kmax); momentum starts at the target; k = target + 0.8 m
    t1 = 0.2 * (2.0 + 0.5 * 20.0)
    assert s.observe(250.0) == pytest.approx(t1 + 0.8 * t1)
    t2 = 0.2 * (2.0 + 1.0 * 20.0)
    m2 = 0.5 * t1 + 0.5 * t2
    assert s.observe(500.0) == pytest.approx(min(t2 + 0.8 * m2, 20.0))
    state = s.state_dict()
    other = SlopeScheduler(s.schedule)
    other.load_state_dict(state)
    assert other.observe(100.0) == s.observe(100.0)


def test_invalid_schedules():
    with pytest.raises(ValueError):
        SlopeSchedule(initial=0.5, minimum=1.0)
    with pytest.raises(ValueError):
        SlopeSchedule(score_min=10.0, score_max=10.0)


def test_guide_handover_schedule():
    assert guide_steps(0.0, 500, 50, 0.75) == 500
    assert guide_steps(0.375, 500, 50, 0.75) == 275  # halfway through the decay
    assert guide_steps(0.75, 500, 50, 0.75) == 50
    assert guide_steps(1.0, 500, 50, 0.75) == 50  # stays at the warm-up floor
    values = [guide_steps(p / 100, 500, 50, 0.75) for p in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:])), "G never grows"
    with pytest.raises(ValueError):
        guide_steps(0.5, decay_share=0.0)


def test_curriculum_stages_and_bc_decay():
    assert [curriculum_stage(p) for p in (0.0, 0.16, 1 / 6, 0.5, 0.83, 0.99, 1.0)] == [0, 0, 1, 3, 4, 5, 5]
    assert bc_weight(0) == 0.2 and bc_weight(2) == pytest.approx(0.2 * 0.99**2)


def test_milestones_from_the_history():
    from snn_controller.train.run import milestones

    history = [{"iteration": 1, "seconds": 5.0, "env_steps": 100},
               {"iteration": 2, "seconds": 9.0, "env_steps": 200, "eval_return": 150.0},
               {"iteration": 3, "seconds": 14.0, "env_steps": 300, "eval_return": 90.0}]
    m = milestones(history)
    assert m["return_100"] == {"seconds": 9.0, "env_steps": 200, "iteration": 2} and m["return_400"] is None
