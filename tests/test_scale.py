"""bench/scale.py: the autoscaling arithmetic on deterministic inputs; every expected figure is worked out by hand
in the comments, not taken from the code."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "packaging"))

import _capacity  # noqa: E402
from bench import scale  # noqa: E402

# one instance: 1 in flight -> 10 req/s at p95 100 ms, 2 -> 18 at 110, 4 -> 20 at 200, 8 -> 20 at 400 (no gain:
# dropped, more clients only queue)
LEVELS = tuple(_capacity.Level(c, x, x, p / 2, p) for c, x, p in ((1, 10, 100), (2, 18, 110), (4, 20, 200),
                                                                 (8, 20, 400)))
INSTANCE = scale.Instance.of(LEVELS)


def test_an_instance_interpolates_between_measured_levels():
    assert INSTANCE.rates == (10, 18, 20) and INSTANCE.max_rate == 20
    assert INSTANCE.at(5) == (0.5, 100)  # half the first level's rate: half its concurrency, its p95
    assert INSTANCE.at(14) == (1.5, 105)  # halfway from 10 to 18 req/s
    assert INSTANCE.at(19) == (3.0, 155)  # halfway from 18 to 20 req/s
    assert INSTANCE.at(20) == (4.0, 200)


def quiet(**overrides) -> scale.Policy:
    values = dict(metric="concurrency", target=100.0, min_instances=1, max_instances=1, start_s=60,
                  scale_out_cooldown_s=60, scale_in_cooldown_s=300, timeout_s=60.0)
    values.update(overrides)
    return scale.Policy(**values)


def test_steady_load_under_capacity_neither_queues_nor_scales():
    result = scale.simulate(lambda t: 14.0, 120, INSTANCE, quiet())
    for minute in result.minutes:
        assert (minute.served, minute.queued, minute.refused, minute.instances) == (840, 0, 0, 1)
        assert minute.p95_ms == 105
    assert result.scaling == [] and result.instance_minutes == 2


def test_overload_queues_then_refuses_past_the_deadline():
    # 30 req/s on 20: the queue grows 10/s; the 60 s deadline holds 60 x 20 = 1200 queued, reached after 120 s
    result = scale.simulate(lambda t: 30.0, 180, INSTANCE, quiet())
    first, second, third = result.minutes
    assert (first.served, first.queued, first.refused) == (1200, 600, 0)
    assert (second.queued, second.refused) == (1200, 0)
    assert (third.queued, third.refused) == (1200, 600)
    # second t (from 0) waits behind 10(t+1) queued at 20/s: 200 ms + 500(t+1) ms; 95% of 60 equal seconds is
    # the 57th: 200 + 500 x 57
    assert first.p95_ms == 28_700


def test_target_tracking_scales_out_after_three_high_periods_and_drains():
    policy = quiet(target=2.0, max_instances=4)
    result = scale.simulate(lambda t: 36.0, 240, INSTANCE, policy)
    # metric = 4 in flight + queue (16/s more than served): above 2 from the first 10 s period; at the third (t=30)
    # it is 4 + 16 x 25.5 = 412, so ceil(1 x 412 / 2) capped at 4 instances, in service at 30 + 60 = 90 s
    assert result.scaling == [(30, 1, 4)]
    # the queue hits the deadline's 1200 when 16(t+1) > 1200, t = 75..89: 15 s x 16 refused
    assert result.refused == 240
    third = result.minutes[2]  # from t=120: 4 instances, 9 req/s each, the queue long drained
    assert (third.instances, third.queued, third.refused, third.p95_ms) == (4, 0, 0, 100)


def test_scale_in_waits_fifteen_low_minutes_then_keeps_the_target():
    policy = quiet(target=2.0, min_instances=1, max_instances=4)
    # 9 req/s on 4 instances: 2.25 each, 0.225 in flight, under 90% of 2 from the first period (t=0..10)
    result = scale.simulate(lambda t: 9.0, 1200, INSTANCE, policy, initial=4)
    # 15 minutes later (t=900): ceil(4 x 0.225 / 2) = 1; on 1 instance 9 req/s is 0.9 in flight: still low, but
    # the minimum is reached
    assert result.scaling == [(900, 4, 1)]
    # the decision falls on the last second of minute 14 (t = 899)
    assert result.minutes[13].instances == 4 and result.minutes[14].instances == 1


def test_invocations_per_instance_is_a_per_minute_metric():
    # 36 req/s served by 1 instance of 20: 1200 invocations per minute against a target of 600
    policy = scale.Policy(metric="invocations", target=600.0, max_instances=4, start_s=60)
    result = scale.simulate(lambda t: 36.0, 240, INSTANCE, policy)
    # 60 s periods: high at t=60, 120, 180; at 180, ceil(1 x 1200 / 600) = 2 instances
    assert result.scaling == [(180, 1, 2)]


def test_policy_targets_come_from_the_same_derivation_as_the_builder():
    measurement = _capacity.Measurement("m", "embedding", "torch", "query", 1, "/invocations",
                                        _capacity.Machine("local", None, "cpu", 2, 8000), "2026-11-30T00:00:00Z", 2,
                                        600.0, 1000.0, LEVELS)
    # p95 <= 1000 ms: the best level is 4 in flight at 20 req/s (8 in flight adds nothing and is not faster);
    # half of it, 10 req/s, is the first level: 1 in flight
    assert scale.policy_for(measurement, "concurrency", p95_ms=None, headroom=0.5).target == 1.0
    assert scale.policy_for(measurement, "invocations", p95_ms=None, headroom=0.5).target == 600.0


def test_traffic_curves(tmp_path):
    _, spike, _ = scale.traffic("spike:10:100:2:1")
    assert [spike(t) for t in (0, 119, 120, 179, 180)] == [10, 10, 100, 100, 10]
    _, ramp, minutes = scale.traffic("ramp:0:60:10")
    assert (ramp(0), ramp(300), ramp(600), ramp(900), minutes) == (0, 30, 60, 60, 10)
    path = tmp_path / "traffic.csv"
    path.write_text("minute,requests_per_s\n0,5\n1,50\n")
    _, per_minute, minutes = scale.traffic(f"csv:{path}")
    assert (per_minute(30), per_minute(90), minutes) == (5, 50, 2)
    with pytest.raises(SystemExit, match="refused: --traffic"):
        scale.traffic("wave:3")
