"""`make scale`: a SageMaker real-time endpoint's autoscaling, replayed on paper from the measured capacity.

A traffic curve (steady, ramp, spike, or a CSV of requests/s per minute) is played second by second against N
instances, each serving as the capacity file says one instance does (packaging/_capacity.py), under the target
tracking policy packaging/deployment.py writes (same derivation: measured concurrency x headroom, or requests/s x
headroom x 60). It prints, per minute, instances in service and starting, requests served, queued and refused, and
an approximate p95 latency, as Markdown.

The model (a fluid model driven by the measured curve, not a fitted M/M/c):
- an instance serves up to its best measured rate (requests/s, any latency); requests beyond wait in one FIFO
  queue shared by the instances (SageMaker spreads requests; the container queues what it cannot start);
- at a per-instance rate r below that, in-flight requests and p95 latency are interpolated between the measured
  levels (closed-loop runs: concurrency c gives rate X(c) at latency p95(c)); p95 = p95(r) + the queue's wait
  (queued / service rate); a request that would wait past the container's 50 s budget is refused (its 503), as
  the server's admission by deadline does;
- the policy's metric: ConcurrentRequestsPerModel = in flight + queued per instance, averaged over each 10 s period
  (high-resolution), or InvocationsPerInstance = requests served per instance per minute (60 s periods);
- Application Auto Scaling's target tracking: scale out when the metric is above the target for 3 consecutive
  periods, to ceil(instances x metric / target) (at most --max); scale in when it is below 90% of the target for
  15 minutes (SageMaker's high-resolution metrics "scale in at the same speed as standard metrics"), to the same
  formula (at least --min); cooldowns as deployment.py writes them; no scaling while instances are still starting
  (the endpoint is Updating);
- a new instance serves --start-s after the decision (default 180 s, an assumption: SageMaker documents only
  "several minutes" to provision; AWS's scale-to-zero post measured ~1 minute to trigger and ~1.75 minutes to
  provision an instance before the model loads; this model is ready 5.5 s after its container starts).
Delays documented by AWS: high-resolution metrics every 10 s, standard every 60 s (SageMaker developer guide,
"Define a scaling policy"); 3 periods out / 15 minutes in are the alarms target tracking creates (assumed, not
published as API).

Kubernetes (`--autoscaler hpa`): the HorizontalPodAutoscaler deployment.py writes, as kubernetes.io's "Horizontal Pod
Autoscaling" documents its algorithm: every 15 s (the controller's sync period) desiredReplicas =
ceil(currentReplicas x currentMetricValue / desiredMetricValue), no change while the ratio is within 0.1 of 1.0; pods
still starting report no metric and count as 0 of the target when scaling up, as 100% when scaling down; scale-up
limited by the policies (+100% or +4 pods per 15 s, the larger), scale-down to the highest recommendation of the
stabilization window (300 s). The metric is the pods' average in-flight count (searchbox_queue_depth).

    .venv/bin/python -m bench.scale [--capacity bench/capacity.json] [--machine local] [--backend torch] \\
        [--traffic steady:40] [--traffic ramp:10:300] [--traffic spike:20:300:10:5] [--traffic csv:FILE] \\
        [--minutes 40] [--metric concurrency|invocations] [--headroom 0.5] [--min 1] [--max 8] [--start-s 180] \\
        [--autoscaler application-autoscaling|hpa]
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "packaging"))
import _capacity  # noqa: E402

from model_handlers.options import HandlerOptions  # noqa: E402

REQUEST_TIMEOUT_S = HandlerOptions.request_timeout_s  # the container refuses what cannot finish within it
START_S = 180.0
OUT_PERIODS = 3
IN_WINDOW_S = 900
SCALE_IN_RATIO = 0.9
PERIOD_S = {"concurrency": 10, "invocations": 60}


# one instance, as measured: the curve the capacity file's levels draw (packaging/_capacity.py)
Instance = _capacity.Curve


# --- the policy --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    metric: str  # "concurrency" | "invocations"
    target: float
    min_instances: int = 1
    max_instances: int = 8
    start_s: float = START_S
    scale_out_cooldown_s: float = _capacity.SCALE_OUT_COOLDOWN_S
    scale_in_cooldown_s: float = _capacity.SCALE_IN_COOLDOWN_S
    out_periods: int = OUT_PERIODS
    in_window_s: float = IN_WINDOW_S
    timeout_s: float = REQUEST_TIMEOUT_S

    @property
    def period_s(self) -> int:
        return PERIOD_S[self.metric]


def policy_for(measurement: _capacity.Measurement, metric: str, *, p95_ms: float | None, headroom: float,
               **kwargs) -> Policy:
    """The target deployment.py would write for this measurement (one place: _capacity.targets)."""
    targets = _capacity.targets(measurement, p95_ms, headroom)
    value = targets.concurrency if metric == "concurrency" else targets.invocations_per_minute
    return Policy(metric, value, **kwargs)


# --- simulation --------------------------------------------------------------------------------------------------


@dataclass
class Minute:
    minute: int
    offered: float = 0.0  # requests arrived
    served: float = 0.0
    refused: float = 0.0
    queued: float = 0.0  # at the end of the minute
    instances: int = 0  # in service at the end of the minute
    starting: int = 0
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (p95 ms, requests served at it)

    @property
    def p95_ms(self) -> float:
        """The latency 95% of this minute's requests were answered within (each second's estimate, weighted)."""
        total = sum(n for _, n in self.latencies)
        if total <= 0:
            return 0.0
        seen = 0.0
        for latency, n in sorted(self.latencies):
            seen += n
            if seen >= 0.95 * total:
                return latency
        return max(latency for latency, _ in self.latencies)


@dataclass
class Result:
    minutes: list[Minute]
    scaling: list[tuple[float, int, int]]  # (second, instances before, after) of every decision

    @property
    def refused(self) -> float:
        return sum(m.refused for m in self.minutes)

    @property
    def instance_minutes(self) -> float:
        return sum(m.instances + m.starting for m in self.minutes)


@dataclass
class _Fleet:
    """The fluid model both replays share: instances in service and starting, one queue, one-second steps."""

    instance: Instance
    timeout_s: float
    ready: int
    pending: list[float] = field(default_factory=list)  # times at which starting instances come into service
    queue: float = 0.0
    minutes: list[Minute] = field(default_factory=list)

    def second(self, t: int, arrivals: float) -> tuple[float, float]:
        """Second `t`: starting instances due come into service, `arrivals` requests join the queue, the instances in
        service answer what they can, and what could no longer be answered within the deadline is refused.
        Returns (requests answered per instance in service, requests in flight per instance)."""
        if t % 60 == 0:
            self.minutes.append(Minute(t // 60))
        minute = self.minutes[-1]
        came = [when for when in self.pending if when <= t]
        if came:
            self.ready += len(came)
            self.pending = [when for when in self.pending if when > t]
        capacity = self.ready * self.instance.max_rate
        waiting = self.queue + arrivals
        served = min(waiting, capacity)
        self.queue = waiting - served
        refused = max(0.0, self.queue - self.timeout_s * capacity)  # what can still be answered within the deadline
        self.queue -= refused
        per_instance = served / self.ready if self.ready else 0.0
        in_flight, p95 = self.instance.at(min(per_instance, self.instance.max_rate)) if self.ready else (0.0, 0.0)
        minute.offered += arrivals
        minute.served += served
        minute.refused += refused
        if served:
            minute.latencies.append((p95 + (1000 * self.queue / capacity if capacity else 0.0), served))
        return per_instance, in_flight

    def end_second(self) -> None:
        minute = self.minutes[-1]
        minute.queued = self.queue
        minute.instances = self.ready
        minute.starting = len(self.pending)


def simulate(rate_at: Callable[[float], float], seconds: int, instance: Instance, policy: Policy,
             initial: int | None = None) -> Result:
    """Play `rate_at(t)` requests/s for `seconds` seconds, one-second steps."""
    fleet = _Fleet(instance, policy.timeout_s, max(policy.min_instances, initial or policy.min_instances))
    scaling: list[tuple[float, int, int]] = []
    period_sum, period_len = 0.0, 0
    high_streak, low_since = 0, None
    last_out = last_in = -math.inf
    for t in range(seconds):
        per_instance, in_flight = fleet.second(t, max(0.0, rate_at(t)))
        ready, queue = fleet.ready, fleet.queue
        # the metric as SageMaker publishes it, per instance in service
        if policy.metric == "concurrency":
            period_sum += (in_flight + queue / ready) if ready else 0.0
        else:
            period_sum += per_instance
        period_len += 1
        if period_len == policy.period_s:
            value = period_sum / period_len if policy.metric == "concurrency" else period_sum * 60 / period_len
            period_sum, period_len = 0.0, 0
            now = t + 1
            high_streak = high_streak + 1 if value > policy.target else 0
            low_since = (low_since if low_since is not None else now - policy.period_s) \
                if value < SCALE_IN_RATIO * policy.target else None
            updating = bool(fleet.pending)
            if not updating and high_streak >= policy.out_periods and now - last_out >= policy.scale_out_cooldown_s:
                desired = min(policy.max_instances, math.ceil(ready * value / policy.target))
                if desired > ready:
                    fleet.pending += [now + policy.start_s] * (desired - ready)
                    scaling.append((now, ready, desired))
                    last_out, high_streak = now, 0
            elif (not updating and low_since is not None and now - low_since >= policy.in_window_s
                  and now - last_in >= policy.scale_in_cooldown_s):
                desired = max(policy.min_instances, math.ceil(ready * value / policy.target))
                if desired < ready:
                    scaling.append((now, ready, desired))
                    fleet.ready, last_in, low_since = desired, now, None
        fleet.end_second()
    return Result(fleet.minutes, scaling)


# --- Kubernetes' HorizontalPodAutoscaler ------------------------------------------------------------------------

HPA_SYNC_S = 15
HPA_TOLERANCE = 0.1
HPA_DOWN_WINDOW_S = 300


@dataclass(frozen=True)
class HpaPolicy:
    target: float  # average in-flight per pod
    min_replicas: int = 1
    max_replicas: int = 8
    start_s: float = START_S
    tolerance: float = HPA_TOLERANCE
    sync_s: int = HPA_SYNC_S
    down_window_s: float = HPA_DOWN_WINDOW_S
    up_percent: float = 100.0
    up_pods: int = 4
    up_period_s: int = 15
    timeout_s: float = REQUEST_TIMEOUT_S


def hpa_recommendation(ready: int, starting: int, metric_sum: float, target: float, tolerance: float) -> int:
    """One sync's desired replicas from the ready pods' summed metric (kubernetes.io, "Algorithm details").

    currentReplicas counts every pod of the Deployment; pods still starting have no metric: when the ready pods
    alone would scale up they count as 0 of the target, when they would scale down as 100% of it, and a
    recomputed ratio that reverses the direction or falls within the tolerance changes nothing.
    """
    current = ready + starting
    if ready == 0:
        return current
    ratio = metric_sum / (ready * target)
    if abs(ratio - 1.0) <= tolerance:
        return current
    if starting:
        filled = metric_sum + (0.0 if ratio > 1.0 else starting * target)
        new_ratio = filled / (current * target)
        if abs(new_ratio - 1.0) <= tolerance or (new_ratio > 1.0) != (ratio > 1.0):
            return current
        ratio = new_ratio
    return math.ceil(current * ratio)


def simulate_hpa(rate_at: Callable[[float], float], seconds: int, instance: Instance, policy: HpaPolicy,
                 initial: int | None = None) -> Result:
    """Play `rate_at(t)` requests/s against pods the HPA scales, one-second steps (the same fluid model)."""
    fleet = _Fleet(instance, policy.timeout_s, max(policy.min_replicas, initial or policy.min_replicas))
    scaling: list[tuple[float, int, int]] = []
    recommendations: list[tuple[float, int]] = []  # (second, desired) for the scale-down window
    ups: list[tuple[float, int]] = []  # (second, pods added) for the scale-up policies' periods
    for t in range(seconds):
        _, in_flight = fleet.second(t, max(0.0, rate_at(t)))
        now = t + 1
        if now % policy.sync_s == 0:
            ready, pending = fleet.ready, fleet.pending
            current = ready + len(pending)
            metric_sum = ready * in_flight + fleet.queue  # what the pods' gauges read: running and queued
            desired = hpa_recommendation(ready, len(pending), metric_sum, policy.target, policy.tolerance)
            recommendations = [(when, d) for when, d in recommendations if now - when < policy.down_window_s]
            recommendations.append((now, desired))
            if desired < current:
                desired = max(d for _, d in recommendations)  # the window's highest: no flapping down
            ups = [(when, n) for when, n in ups if now - when < policy.up_period_s]
            added = sum(n for _, n in ups)
            base = current - added  # replicas at the start of the policy period
            up_limit = max(math.ceil(base * (1 + policy.up_percent / 100)), base + policy.up_pods)
            desired = min(desired, up_limit)
            desired = max(policy.min_replicas, min(policy.max_replicas, desired))
            if desired > current:
                fleet.pending += [now + policy.start_s] * (desired - current)
                ups.append((now, desired - current))
                scaling.append((now, current, desired))
            elif desired < current:
                drop = current - desired
                cancelled = min(drop, len(pending))
                fleet.pending = pending[:len(pending) - cancelled]
                fleet.ready -= drop - cancelled
                scaling.append((now, current, desired))
        fleet.end_second()
    return Result(fleet.minutes, scaling)


# --- traffic -----------------------------------------------------------------------------------------------------


def traffic(spec: str) -> tuple[str, Callable[[float], float], int | None]:
    """(title, requests/s at second t, minutes it defines or None) from `steady:R`, `ramp:FROM:TO[:MINUTES]`,
    `spike:BASE:PEAK:AT_MIN:FOR_MIN`, or `csv:FILE` (rows `minute,requests_per_s`, a header allowed)."""
    kind, _, rest = spec.partition(":")
    try:
        if kind == "steady":
            rate = float(rest)
            return f"steady {rate:g} requests/s", lambda t: rate, None
        if kind == "ramp":
            parts = [float(x) for x in rest.split(":")]
            start, end = parts[0], parts[1]
            span = parts[2] * 60 if len(parts) > 2 else None

            def ramp(t: float, span=span) -> float:
                length = span or ramp.length  # type: ignore[attr-defined]
                return start + (end - start) * min(1.0, t / length)

            ramp.length = 1.0  # type: ignore[attr-defined]  set to the run's length by curve()
            return f"ramp {start:g} -> {end:g} requests/s", ramp, int(parts[2]) if span else None
        if kind == "spike":
            base, peak, at, length = (float(x) for x in rest.split(":"))
            return (f"spike {base:g} -> {peak:g} requests/s at minute {at:g} for {length:g} min",
                    lambda t: peak if at * 60 <= t < (at + length) * 60 else base, None)
        if kind == "csv":
            rows = []
            with open(rest, newline="") as handle:
                for row in csv.reader(handle):
                    if row and row[0].strip().lstrip("-").replace(".", "", 1).isdigit():
                        rows.append((int(float(row[0])), float(row[1])))
            if not rows:
                raise ValueError("no `minute,requests_per_s` rows")
            per_minute = dict(rows)
            last = max(per_minute)
            return (f"{Path(rest).name} ({len(rows)} minutes)",
                    lambda t: per_minute.get(int(t // 60), 0.0), last + 1)
    except (ValueError, IndexError, OSError) as exc:
        raise SystemExit(f"refused: --traffic: {spec!r}: {exc}") from exc
    raise SystemExit(f"refused: --traffic: {spec!r} is not steady:R, ramp:FROM:TO[:MIN], spike:BASE:PEAK:AT:FOR or "
                     "csv:FILE")


# --- report ------------------------------------------------------------------------------------------------------


def report(title: str, result: Result, policy: Policy, instance: Instance, p95_target_ms: float) -> str:
    over = sum(1 for m in result.minutes if m.p95_ms > p95_target_ms)
    lines = [f"### {title}", "",
             f"Policy: {policy.metric} target {policy.target:g} per instance, "
             f"{policy.min_instances}..{policy.max_instances} instances, start {policy.start_s:g} s; one instance serves at most {instance.max_rate:.1f} requests/s.",
             "", "| minute | offered req/s | served req/s | instances (starting) | queued at end | refused | p95 ms |",
             "|---|---|---|---|---|---|---|"]
    for m in result.minutes:
        starting = f" (+{m.starting})" if m.starting else ""
        lines.append(f"| {m.minute} | {m.offered / 60:.1f} | {m.served / 60:.1f} | {m.instances}{starting} "
                     f"| {m.queued:.0f} | {m.refused:.0f} | {m.p95_ms:.0f} |")
    decisions = ", ".join(f"{t / 60:.1f} min: {a}->{b}" for t, a, b in result.scaling) or "none"
    lines += ["", f"Scaling decisions: {decisions}. Minutes over the p95 target ({p95_target_ms:g} ms): {over}; "
              f"requests refused: {result.refused:.0f}; instance-minutes: {result.instance_minutes:.0f}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", default=str(ROOT / "bench" / "capacity.json"))
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--machine", default=_capacity.LOCAL, help="the measured machine's label (instance type)")
    parser.add_argument("--shape", default="query")
    parser.add_argument("--traffic", action="append", help="repeatable; default: steady, ramp and spike scaled to "
                                                           "the measured capacity")
    parser.add_argument("--minutes", type=int, default=40)
    parser.add_argument("--metric", choices=tuple(PERIOD_S), default="concurrency")
    parser.add_argument("--p95-ms", type=float)
    parser.add_argument("--headroom", type=float, default=_capacity.DEFAULT_HEADROOM)
    parser.add_argument("--min", type=int, default=1)
    parser.add_argument("--max", type=int, default=8)
    parser.add_argument("--start-s", type=float, default=START_S)
    parser.add_argument("--scale-out-cooldown", type=float, default=_capacity.SCALE_OUT_COOLDOWN_S)
    parser.add_argument("--scale-in-cooldown", type=float, default=_capacity.SCALE_IN_COOLDOWN_S,
                        help="seconds; with --autoscaler hpa, the scale-down stabilization window")
    parser.add_argument("--autoscaler", choices=("application-autoscaling", "hpa"), default="application-autoscaling",
                        help="SageMaker's target tracking, or Kubernetes' HorizontalPodAutoscaler on in-flight per pod")
    args = parser.parse_args(argv)
    try:
        found = _capacity.find(_capacity.load(args.capacity), model=args.model, backend=args.backend,
                               shape=args.shape, instance_type=args.machine, flag="--machine")
        policy = policy_for(found.measurement, args.metric, p95_ms=args.p95_ms, headroom=args.headroom,
                            min_instances=args.min, max_instances=args.max, start_s=args.start_s,
                            scale_out_cooldown_s=args.scale_out_cooldown, scale_in_cooldown_s=args.scale_in_cooldown)
    except _capacity.CapacityError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    instance = Instance.of(found.measurement.levels)
    sustained = found.measurement.sustained(args.p95_ms)
    per_instance = sustained.requests_per_s if sustained else instance.max_rate
    specs = args.traffic or [f"steady:{2 * per_instance:.0f}", f"ramp:{0.5 * per_instance:.0f}:{6 * per_instance:.0f}",
                             f"spike:{per_instance:.0f}:{8 * per_instance:.0f}:5:10"]
    p95_target = args.p95_ms or found.measurement.p95_target_ms
    print(f"## Scale simulation\n\nCapacity: {found.source}. Sustained at p95 <= {p95_target:g} ms: "
          f"{per_instance:.1f} requests/s per instance.\n")
    for spec in specs:
        title, rate_at, minutes = traffic(spec)
        seconds = 60 * (minutes or args.minutes)
        if hasattr(rate_at, "length"):
            rate_at.length = seconds  # a ramp without its own length spans the run
        if args.autoscaler == "hpa":
            # the target deployment.py's HPA averages: in flight per pod x inputs a request
            hpa = HpaPolicy(policy.target * found.measurement.inputs_per_request if args.metric == "concurrency"
                            else _capacity.targets(found.measurement, args.p95_ms, args.headroom).concurrency,
                            min_replicas=args.min, max_replicas=args.max, start_s=args.start_s,
                            down_window_s=args.scale_in_cooldown)
            shown = Policy("concurrency", hpa.target, args.min, args.max, args.start_s)
            print(report(f"{title} (HorizontalPodAutoscaler)", simulate_hpa(rate_at, seconds, instance, hpa), shown,
                         instance, p95_target))
            continue
        print(report(title, simulate(rate_at, seconds, instance, policy), policy, instance, p95_target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
