"""The capacity file: what one instance sustains, measured by `bench/capacity.py`, read by `deployment.py`.

One module owns the format, its checks and the arithmetic that turns a measurement into scaling numbers, so that
the benchmark that writes the file, the deployment builder that sizes endpoints from it and the scale simulation
(`bench/scale.py`) cannot disagree. Imported through the scripts' own directory on sys.path (bench adds it), never
a package (see README.md).

Format (`bench/capacity.json`, JSON, `"schema": "searchbox-capacity/1"`), one entry per measured (model, backend,
request shape, machine):

    {"schema": "searchbox-capacity/1",
     "measurements": [{
        "model": "all-MiniLM-L6-v2", "kind": "embedding", "backend": "torch",   # torch | onnx | onnx-int8
        "shape": {"name": "query", "route": "/invocations", "inputs_per_request": 1, "tokens_per_input": 19.6},
        "machine": {"label": "local", "instance_type": null, "cpu_model": "AMD EPYC ...", "cores": 2,
                    "memory_mb": 7940, "gpu": null, "gpu_count": 0},
        "date": "2026-11-30T10:00:00Z", "torch_threads": 2, "rss_mb": 612.0, "p95_target_ms": 1000,
        "seconds_per_level": 4.0,
        "levels": [{"concurrency": 1, "requests_per_s": 61.2, "inputs_per_s": 61.2, "p50_ms": 15.9,
                    "p95_ms": 21.4, "errors": 0}, ...]}]}

`levels` are closed-loop runs at a fixed number of concurrent clients (keep-alive, each sending its next request
as soon as the last one is answered). The *sustained* level at a p95 target is the one with the most inputs per
second among the error-free levels whose p95 latency meets the target; its concurrency is what the container holds
in flight at that rate (Little's law), which is what SageMaker's `ConcurrentRequestsPerModel` metric counts.
`machine.label` is the instance type when one was given (`--instance-type`, or `SEARCHBOX_INSTANCE_TYPE`), else
"local": a measurement on another machine is never taken for an instance type silently.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SCHEMA = "searchbox-capacity/1"
LOCAL = "local"
# Real-time default: a search query answered within a second at the 95th percentile, queueing included.
DEFAULT_P95_MS = 1000.0
# SageMaker's load-testing guide: SageMakerVariantInvocationsPerInstance = (MAX_RPS * SAFETY_FACTOR) * 60, "start
# testing with a SAFETY_FACTOR of 0.5" (docs.aws.amazon.com/sagemaker/latest/dg/endpoint-scaling-loadtest.html).
DEFAULT_HEADROOM = 0.5
# Cooldowns the deployment builder writes and the scale simulation plays:
# - ScaleInCooldown 300 s: Application Auto Scaling's default for SageMaker endpoint variants (API reference,
#   TargetTrackingScalingPolicyConfiguration.ScaleInCooldown), written out explicitly.
# - ScaleOutCooldown 60 s: a new instance takes minutes to come into service and SageMaker does not scale an
#   endpoint that is still updating, so a short cooldown lets a second step follow as soon as the first is served.
SCALE_IN_COOLDOWN_S = 300
SCALE_OUT_COOLDOWN_S = 60
SHAPES = {"query": 1, "batch": 32}  # request shapes the benchmark measures: inputs per request
BACKENDS = ("torch", "onnx", "onnx-int8")


class CapacityError(ValueError):
    """The capacity file is missing, malformed, or holds no measurement for what was asked; names the field."""


@dataclass(frozen=True)
class Machine:
    label: str
    instance_type: str | None
    cpu_model: str
    cores: int
    memory_mb: int
    gpu: str | None = None
    gpu_count: int = 0

    def describe(self) -> str:
        gpu = f"{self.gpu_count} x {self.gpu}" if self.gpu else "no GPU"
        where = self.instance_type or "this machine (no instance type given)"
        return f"{where}: {self.cores} vCPU {self.cpu_model}, {self.memory_mb / 1024:.1f} GiB, {gpu}"


@dataclass(frozen=True)
class Level:
    concurrency: int
    requests_per_s: float
    inputs_per_s: float
    p50_ms: float
    p95_ms: float
    errors: int = 0


@dataclass(frozen=True)
class Measurement:
    model: str
    kind: str
    backend: str
    shape: str
    inputs_per_request: int
    route: str
    machine: Machine
    date: str
    torch_threads: int
    rss_mb: float
    p95_target_ms: float
    levels: tuple[Level, ...]
    tokens_per_input: float = 0.0
    seconds_per_level: float = 0.0

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.model, self.backend, self.shape, self.machine.label

    def sustained(self, p95_ms: float | None = None) -> Level | None:
        """The level with the most inputs/s whose p95 meets `p95_ms` (the recorded target if None), error-free."""
        limit = self.p95_target_ms if p95_ms is None else p95_ms
        fitting = [level for level in self.levels if level.errors == 0 and level.p95_ms <= limit]
        return max(fitting, key=lambda level: level.inputs_per_s, default=None)

    def saturation(self) -> Level:
        """The error-free level with the most requests/s, whatever its latency: what one instance can serve at all."""
        clean = [level for level in self.levels if level.errors == 0] or list(self.levels)
        return max(clean, key=lambda level: level.requests_per_s)

    def describe(self) -> str:
        return (f"{self.model} ({self.backend}), {self.shape} requests of {self.inputs_per_request} input"
                f"{'s' * (self.inputs_per_request != 1)}, measured {self.date[:10]} on {self.machine.describe()}")


@dataclass(frozen=True)
class Curve:
    """One instance as measured: requests/s -> (requests in flight, p95 ms), interpolated between closed-loop levels.

    Only levels that add throughput are kept (past saturation more clients only queue). Below the first level the
    in-flight count falls linearly to 0 and p95 stays the first level's: one request alone is not faster.
    """

    rates: tuple[float, ...]  # requests/s, increasing
    concurrency: tuple[float, ...]
    p95_ms: tuple[float, ...]

    @classmethod
    def of(cls, levels: tuple[Level, ...]) -> "Curve":
        rates: list[float] = []
        conc: list[float] = []
        p95: list[float] = []
        for level in sorted((lv for lv in levels if lv.errors == 0), key=lambda lv: lv.concurrency):
            if not rates or level.requests_per_s > rates[-1]:
                rates.append(level.requests_per_s)
                conc.append(float(level.concurrency))
                p95.append(level.p95_ms)
        if not rates:
            raise CapacityError("levels: no error-free level measured")
        return cls(tuple(rates), tuple(conc), tuple(p95))

    @property
    def max_rate(self) -> float:
        return self.rates[-1]

    def at(self, rate: float) -> tuple[float, float]:
        """(requests in flight, p95 ms) at `rate` requests/s, at most max_rate."""
        if rate <= self.rates[0]:
            return self.concurrency[0] * rate / self.rates[0], self.p95_ms[0]
        hi = min(bisect.bisect_left(self.rates, rate), len(self.rates) - 1)
        lo = hi - 1
        share = (min(rate, self.rates[hi]) - self.rates[lo]) / (self.rates[hi] - self.rates[lo])
        return (self.concurrency[lo] + share * (self.concurrency[hi] - self.concurrency[lo]),
                self.p95_ms[lo] + share * (self.p95_ms[hi] - self.p95_ms[lo]))


@dataclass(frozen=True)
class Targets:
    """Scaling numbers derived from one measurement at a p95 target with a headroom (safety factor).

    The headroom applies to throughput, as in SageMaker's formula for InvocationsPerInstance; the concurrency target
    is what one instance holds in flight at that throughput, read off the measured curve (in flight does not grow in
    proportion to load near saturation, so headroom x the sustained concurrency would be far closer to saturation).
    """

    level: Level
    headroom: float
    curve: Curve

    @property
    def rate(self) -> float:
        """Requests/s per instance to aim for: the sustained rate x headroom."""
        return self.level.requests_per_s * self.headroom

    @property
    def concurrency(self) -> float:
        """ConcurrentRequestsPerModel / PerCopy target: in flight per instance at `rate`."""
        return max(0.01, round(self.curve.at(self.rate)[0], 2))

    @property
    def invocations_per_minute(self) -> float:
        """SageMakerVariantInvocationsPerInstance target: (sustained requests/s x headroom) x 60 (AWS's formula)."""
        return max(1.0, round(self.rate * 60, 1))

    @property
    def max_concurrent_per_instance(self) -> int:
        """Requests one instance is given at once (async ClientConfig, Azure request_settings): the measured level."""
        return max(1, self.level.concurrency)


def targets(measurement: Measurement, p95_ms: float | None, headroom: float, *, flag: str = "--p95-ms") -> Targets:
    """The scaling numbers of `measurement`; raises CapacityError when no measured level meets the p95 target."""
    if not 0 < headroom <= 1:
        raise CapacityError(f"--headroom: {headroom} must be in (0, 1]: the share of measured capacity to target")
    level = measurement.sustained(p95_ms)
    if level is None:
        best = min(measurement.levels, key=lambda lv: lv.p95_ms)
        limit = measurement.p95_target_ms if p95_ms is None else p95_ms
        raise CapacityError(f"{flag}: no measured level of {measurement.describe()} meets p95 <= {limit:g} ms "
                            f"(lowest: {best.p95_ms:.0f} ms at {best.concurrency} concurrent); raise the target or "
                            "measure a faster instance type")
    return Targets(level, headroom, Curve.of(measurement.levels))


# --- reading and writing ---------------------------------------------------------------------------------------


def load(path: str | Path) -> list[Measurement]:
    """Read and check a capacity file. Raises CapacityError naming the path and field."""
    path = Path(path)
    if not path.is_file():
        raise CapacityError(f"--capacity: {path} does not exist; measure with `python -m bench.capacity` "
                            "(make capacity) on the instance type you deploy to")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CapacityError(f"--capacity: {path} is not readable JSON ({exc})") from exc
    return parse(raw, str(path))


def parse(raw: Any, where: str) -> list[Measurement]:
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        got = raw.get("schema") if isinstance(raw, dict) else raw
        raise CapacityError(f"{where}: schema: expected {SCHEMA!r}, got {got!r}")
    entries = raw.get("measurements")
    if not isinstance(entries, list):
        raise CapacityError(f"{where}: measurements: must be a list")
    measurements = [_measurement(entry, f"{where}: measurements[{i}]") for i, entry in enumerate(entries)]
    seen: dict[tuple, int] = {}
    for i, measurement in enumerate(measurements):
        if measurement.key in seen:
            raise CapacityError(f"{where}: measurements[{i}]: the same model, backend, shape and machine as "
                                f"measurements[{seen[measurement.key]}]")
        seen[measurement.key] = i
    return measurements


def dumps(measurements: list[Measurement]) -> str:
    entries = []
    for m in sorted(measurements, key=lambda m: m.key):
        entry = asdict(m)
        entry["shape"] = {"name": m.shape, "route": m.route, "inputs_per_request": m.inputs_per_request,
                          "tokens_per_input": m.tokens_per_input}
        for moved in ("inputs_per_request", "route", "tokens_per_input"):
            entry.pop(moved)
        entry["levels"] = [asdict(level) for level in m.levels]
        entries.append(entry)
    return json.dumps({"schema": SCHEMA, "measurements": entries}, indent=2) + "\n"


def merge(existing: list[Measurement], new: list[Measurement]) -> list[Measurement]:
    """`existing` with `new` replacing entries of the same (model, backend, shape, machine)."""
    replaced = {m.key for m in new}
    return [m for m in existing if m.key not in replaced] + list(new)


def write(path: str | Path, new: list[Measurement]) -> list[Measurement]:
    """Merge `new` into the file at `path` (created when absent); returns what the file now holds."""
    path = Path(path)
    existing = load(path) if path.is_file() else []
    merged = merge(existing, new)
    parse(json.loads(dumps(merged)), str(path))  # what is written must read back
    path.write_text(dumps(merged), encoding="utf-8")
    return merged


# --- lookup ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    measurement: Measurement
    # None when measured on the instance type asked for; else the label of the machine it was measured on
    assumed_from: str | None

    @property
    def source(self) -> str:
        """One line for the outputs: measured, or which measurement stands in for an unmeasured instance type."""
        m = self.measurement
        if self.assumed_from is None:
            return f"measured: {m.describe()}"
        return (f"ASSUMED (--assume-capacity-from {self.assumed_from}): not measured on this instance type; "
                f"sized from {m.describe()}")


def find(measurements: list[Measurement], *, model: str, backend: str, shape: str, instance_type: str,
         assume_from: str | None = None, flag: str = "--instance-type") -> Found:
    """The measurement of `model`/`backend`/`shape` on `instance_type`, or, only when `assume_from` names a measured
    machine, that machine's, marked as an assumption. Raises CapacityError saying what was measured and what to do.
    """
    same = [m for m in measurements if (m.model, m.backend, m.shape) == (model, backend, shape)]
    if not same:
        held = sorted({f"{m.model} ({m.backend}, {m.shape})" for m in measurements}) or ["nothing"]
        raise CapacityError(f"--capacity: no measurement of {model} ({backend}, {shape} requests); the file holds "
                            f"{', '.join(held)}; run `python -m bench.capacity` for it")
    exact = [m for m in same if m.machine.label == instance_type]
    if exact:
        return Found(exact[0], None)
    labels = ", ".join(sorted(f"{m.machine.label} ({m.machine.describe()})" for m in same))
    if assume_from is None:
        raise CapacityError(f"{flag}: {instance_type} was not measured: the capacity file holds {model} ({backend}, "
                            f"{shape}) on {labels}. Measure it there (`python -m bench.capacity --instance-type "
                            f"{instance_type}`), or pass --assume-capacity-from LABEL to size from another machine, "
                            "stated as an assumption in every output")
    stand_in = [m for m in same if m.machine.label == assume_from]
    if not stand_in:
        raise CapacityError(f"--assume-capacity-from: {assume_from!r} is not a measured machine of {model} "
                            f"({backend}, {shape}); measured: {labels}")
    return Found(stand_in[0], assume_from)


def any_machine(measurements: list[Measurement], *, model: str, backend: str) -> Measurement:
    """The most recent measurement of `model`/`backend` on any machine: for what does not depend on the machine
    (resident memory). Raises CapacityError when there is none."""
    same = [m for m in measurements if (m.model, m.backend) == (model, backend)]
    if not same:
        raise CapacityError(f"--capacity: no measurement of {model} ({backend}); run `python -m bench.capacity`")
    return max(same, key=lambda m: m.date)


# --- checks ------------------------------------------------------------------------------------------------------


def _measurement(raw: Any, where: str) -> Measurement:
    if not isinstance(raw, dict):
        raise CapacityError(f"{where}: must be an object")
    shape = _field(raw, "shape", dict, where)
    machine = _field(raw, "machine", dict, where)
    levels = _field(raw, "levels", list, where)
    if not levels:
        raise CapacityError(f"{where}.levels: no level measured")
    backend = _field(raw, "backend", str, where)
    if backend not in BACKENDS:
        raise CapacityError(f"{where}.backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    return Measurement(
        model=_field(raw, "model", str, where), kind=_field(raw, "kind", str, where), backend=backend,
        shape=_field(shape, "name", str, f"{where}.shape"),
        inputs_per_request=_positive(shape, "inputs_per_request", int, f"{where}.shape"),
        route=_field(shape, "route", str, f"{where}.shape"),
        tokens_per_input=float(shape.get("tokens_per_input") or 0.0),
        machine=Machine(
            label=_field(machine, "label", str, f"{where}.machine"),
            instance_type=machine.get("instance_type"),
            cpu_model=_field(machine, "cpu_model", str, f"{where}.machine"),
            cores=_positive(machine, "cores", int, f"{where}.machine"),
            memory_mb=_positive(machine, "memory_mb", int, f"{where}.machine"),
            gpu=machine.get("gpu"), gpu_count=int(machine.get("gpu_count") or 0)),
        date=_field(raw, "date", str, where),
        torch_threads=_positive(raw, "torch_threads", int, where),
        rss_mb=_positive(raw, "rss_mb", (int, float), where),
        p95_target_ms=_positive(raw, "p95_target_ms", (int, float), where),
        seconds_per_level=float(raw.get("seconds_per_level") or 0.0),
        levels=tuple(_level(level, f"{where}.levels[{i}]") for i, level in enumerate(levels)),
    )


def _level(raw: Any, where: str) -> Level:
    if not isinstance(raw, dict):
        raise CapacityError(f"{where}: must be an object")
    return Level(concurrency=_positive(raw, "concurrency", int, where),
                 requests_per_s=_positive(raw, "requests_per_s", (int, float), where, zero=True),
                 inputs_per_s=_positive(raw, "inputs_per_s", (int, float), where, zero=True),
                 p50_ms=_positive(raw, "p50_ms", (int, float), where, zero=True),
                 p95_ms=_positive(raw, "p95_ms", (int, float), where, zero=True),
                 errors=int(raw.get("errors") or 0))


def _field(raw: dict, key: str, kind, where: str):
    value = raw.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CapacityError(f"{where}.{key}: missing or not a {getattr(kind, '__name__', 'number')}")
    return value


def _positive(raw: dict, key: str, kind, where: str, *, zero: bool = False):
    value = _field(raw, key, kind, where)
    if value < 0 or (value == 0 and not zero) or (isinstance(value, float) and not math.isfinite(value)):
        raise CapacityError(f"{where}.{key}: {value!r} must be {'>= 0' if zero else '> 0'}")
    return value
