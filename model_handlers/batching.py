"""Dynamic batching across concurrent requests, with admission control by deadline.

Request threads tokenize their own input, then `submit` a list of work items and wait on a Future.
A worker thread drains whatever is queued, sorts all items by length (so padding is small),
cuts them into forward passes under a padded-token budget, and hands each caller its own rows.
With several lanes (a backend whose pass runs outside the GIL, ONNX Runtime on a CPU), several passes run at once,
each on its own thread: the passes of one take are shared out, and a take too small to give every idle lane a pass
is cut finer, so that one caller's 32 texts use both cores of a 2-core machine too.
A failing forward pass is retried one request at a time, so a bad request only fails itself.

Admission: every submission carries a `Deadline`. The batcher measures what a padded token costs
(`PassCost`) and knows the tokens queued ahead, so a submission that cannot finish in time is
refused at once — `TooLarge` when it alone would take longer than its deadline allows, `Overloaded`
(with the seconds until the backlog clears) when the queue ahead is the problem — instead of
answering 503 a minute later. Work whose deadline passed or whose caller left is dropped before
its forward pass; so is the rest of a request its caller stopped waiting for.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable, Generic, Hashable, Iterable, Iterator, Protocol, Sequence, TypeVar

from model_handlers.deadline import Deadline
from model_handlers.errors import HandlerError, ModelFailure, Overloaded, TooLarge

logger = logging.getLogger(__name__)

# The batcher and deadline of the request being prepared on this thread (`Batcher.preparing`), so that a kind's
# prepare can refuse what cannot finish before spending on it (`foresee`); unset outside a pipeline's prepare.
_PREPARING: ContextVar["tuple[Batcher, Deadline] | None"] = ContextVar("searchbox_preparing", default=None)


@contextmanager
def preparing(batcher: "Batcher", deadline: Deadline) -> Iterator[None]:
    """Run a request's prepare knowing where its work will go and by when it must be done."""
    token = _PREPARING.set((batcher, deadline))
    try:
        yield
    finally:
        _PREPARING.reset(token)


def foresee(lengths: Iterable[int]) -> None:
    """From a kind's prepare: refuse now (TooLarge, Overloaded) a request whose work, items of these lengths, could not
    finish before its deadline; nothing to do outside a pipeline's prepare (a kind's own tests, calibration)."""
    current = _PREPARING.get()
    if current is not None:
        batcher, deadline = current
        batcher.foresee(lengths, deadline)


class WorkItem(Protocol):
    """What the batcher needs to know of an item: its padded cost and what it may share a pass with."""

    @property
    def length(self) -> int: ...

    @property
    def group(self) -> Hashable: ...


ItemT = TypeVar("ItemT", bound=WorkItem)
OutT = TypeVar("OutT")


def _bucket(length: int) -> int:
    """Sequences of about the same length cost about the same per token: power-of-two buckets."""
    return max(0, int(length) - 1).bit_length()


class PassCost:
    """Measured seconds per padded token of a forward pass, by sequence-length bucket.

    Attention makes long sequences dearer per token, so each bucket keeps its own figures: a moving
    average (what a pass costs now, for the backlog) and the best ever seen (what it costs at least,
    so that a request is only called too large when it could never fit). A bucket not yet measured
    borrows its nearest measured neighbour's figures, except one longer than every measured bucket: the cost per
    token grows with the length (attention), so it goes on growing as it grows between the two longest measured
    buckets (calibration stops at CALIBRATION_LENGTH, and a 32k-token input must not be judged as an 8k one).
    """

    _SMOOTHING = 0.2

    def __init__(self) -> None:
        self._recent: dict[int, float] = {}
        self._best: dict[int, float] = {}
        self._lock = threading.Lock()

    @property
    def measured(self) -> bool:
        return bool(self._recent)

    def reset(self) -> None:
        with self._lock:
            self._recent.clear()
            self._best.clear()

    def observe(self, longest: int, count: int, seconds: float) -> None:
        rate = seconds / max(1, longest * count)
        bucket = _bucket(longest)
        with self._lock:
            before = self._recent.get(bucket)
            self._recent[bucket] = rate if before is None else before + self._SMOOTHING * (rate - before)
            self._best[bucket] = min(rate, self._best.get(bucket, rate))

    def snapshot(self) -> tuple[dict[int, float], dict[int, float]]:
        with self._lock:
            return dict(self._recent), dict(self._best)

    def restore(self, figures: tuple[dict[int, float], dict[int, float]]) -> None:
        recent, best = figures
        with self._lock:
            self._recent, self._best = dict(recent), dict(best)

    def seconds(self, tokens_by_bucket: dict[int, int], *, best: bool = False) -> float:
        """Estimated seconds to run these tokens (0 when nothing was measured yet)."""
        table = self._best if best else self._recent
        with self._lock:
            if not table:
                return 0.0
            return sum(tokens * self._rate(table, bucket) for bucket, tokens in tokens_by_bucket.items())

    @staticmethod
    def _rate(table: dict[int, float], bucket: int) -> float:
        if bucket in table:
            return table[bucket]
        longest = sorted(table)[-2:]
        if bucket > longest[-1] and len(longest) == 2:
            (shorter, longer), (low, high) = longest, (table[known] for known in longest)
            # per-token cost linear in the length between the two longest buckets (lengths 2**bucket), never falling
            slope = max(0.0, (high - low) / (2 ** longer - 2 ** shorter))
            return high + slope * (2 ** bucket - 2 ** longer)
        return table[min(table, key=lambda known: (abs(known - bucket), -known))]


# Calibration's longest pass: one pass of a 32k-token input on a 0.6B decoder takes minutes on a CPU, and the server
# is not ready until calibration ends; longer buckets are extrapolated from the two longest measured (PassCost).
CALIBRATION_LENGTH = 8192

# The calibrations this process measured, by what they measured (see Batcher.calibrate): the model layer's one
# process-wide mutable state. A server loads its model once per worker, so it never reads this back; a process that
# loads the same files again (a test suite, a script comparing settings) takes the figures instead of measuring again.
_CALIBRATIONS: dict[Hashable, tuple[dict[int, float], dict[int, float]]] = {}
_CALIBRATIONS_LOCK = threading.Lock()


def _tokens_by_bucket(lengths: Iterable[int]) -> dict[int, int]:
    tokens: dict[int, int] = {}
    for length in lengths:
        bucket = _bucket(length)
        tokens[bucket] = tokens.get(bucket, 0) + length
    return tokens


@dataclass
class Timing:
    """Where one request's time went, filled in by the batcher: waiting for its first pass, and in passes."""

    queue_s: float = 0.0
    forward_s: float = 0.0


class BatchObserver(Protocol):
    """Told about every pass and every wait (the server turns these into metrics)."""

    def pass_ran(self, items: int, padded_tokens: int, seconds: float) -> None: ...

    def waited(self, seconds: float) -> None: ...


@dataclass
class _Entry(Generic[ItemT, OutT]):
    """One caller's submission."""

    items: Sequence[ItemT]
    future: Future
    deadline: Deadline
    timing: Timing = field(default_factory=Timing)
    enqueued_at: float = field(default_factory=time.monotonic)
    started: bool = False
    outputs: list = field(default_factory=list)
    remaining: int = 0
    failed: bool = False
    # tokens of this entry's items still counted in the batcher's backlog, by bucket
    backlog: dict[int, int] = field(default_factory=dict)
    passes: list[tuple[float, float]] = field(default_factory=list)  # when each of its passes ran (perf_counter)

    def __post_init__(self) -> None:
        self.outputs = [None] * len(self.items)
        self.remaining = len(self.items)
        self.backlog = _tokens_by_bucket(item.length for item in self.items)


def _covered(intervals: list[tuple[float, float]]) -> float:
    """The time the union of these (start, end) intervals covers."""
    covered, reached = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reached:
            covered += end - max(start, reached)
            reached = end
    return covered


@dataclass(eq=False)
class _Take:
    """The entries one worker took from the queue, and how many of the passes cut from them have not ended."""

    entries: list[_Entry]
    left: int


@dataclass(frozen=True)
class _Slot:
    """Where one item's output goes back to."""

    entry: _Entry
    index: int

    @property
    def item(self):
        return self.entry.items[self.index]


class Batcher(Generic[ItemT, OutT]):
    """Gathers work items of concurrent callers into forward passes, on one worker thread per lane.

    Args:
        run: runs one forward pass over items (all of one group) and returns one output per item.
        max_batch_tokens: padded cost bound of one pass: longest item length x item count.
        max_batch_items: item count bound of one pass.
        max_pending_items: items queued or running before `submit` refuses with Overloaded.
        gather_s: under concurrent load, how long to wait for the last take's callers to come back.
        name: thread name, for logs and profiles.
        on_idle: called on the batcher thread when the queue runs dry after at least `idle_after_tokens`
            tokens of work (e.g. to hand freed memory back to the system).
        observer: told about every pass and wait, on the batcher thread.
        lanes: forward passes that may run at once, each on its own thread (`run` must be safe to call from several
            threads, and should leave the GIL while it computes); the measured cost of a pass is then the cost on one
            lane, and the queue ahead clears `lanes` times as fast.
    """

    def __init__(
        self,
        run: Callable[[list[ItemT]], Sequence[OutT]],
        *,
        max_batch_tokens: int = 16384,
        max_batch_items: int = 256,
        max_pending_items: int = 65536,
        gather_s: float = 0.004,
        name: str = "batcher",
        on_idle: Callable[[], None] | None = None,
        idle_after_tokens: int = 1 << 16,
        observer: BatchObserver | None = None,
        lanes: int = 1,
    ):
        self._run = run
        self._observer = observer
        self._max_batch_tokens = max_batch_tokens
        self._max_batch_items = max_batch_items
        self._max_pending_items = max_pending_items
        self._queue: deque[_Entry] = deque()
        self._pending_items = 0
        self._cond = threading.Condition()
        self._closed = False
        self._gather_s = gather_s
        self._last_callers = 0  # callers served by the last take; more than one means concurrent load
        self._draining = False
        self._running: dict[int, _Entry] = {}  # taken entries whose passes have not all ended, by id
        self._lanes = max(1, lanes)
        self._ready: deque[tuple[_Take, list[_Slot]]] = deque()  # passes cut from a take, waiting for a free lane
        self._busy = 0  # lanes running a pass
        self._answers = threading.Lock()  # several lanes deliver to one caller's rows
        self._backlog: dict[int, int] = {}  # tokens queued or running, by length bucket
        self._on_idle = on_idle
        self._idle_after_tokens = idle_after_tokens
        self._tokens_since_idle = 0
        self.cost = PassCost()
        self.passes = 0  # forward passes run so far; read by tests and benchmarks
        self._threads = [threading.Thread(target=self._loop, name=name if self._lanes == 1 else f"{name}-{lane}",
                                          daemon=True) for lane in range(self._lanes)]
        for thread in self._threads:
            thread.start()

    @property
    def pending_items(self) -> int:
        """Items queued or running."""
        return self._pending_items

    def submit(self, items: Sequence[ItemT], deadline: Deadline | None = None) -> Future:
        """Queue one caller's items; the Future resolves to their outputs in the same order.

        Raises:
            Overloaded: too much work is queued to finish this before its deadline (or the server stops).
            TooLarge: this work alone could not finish before its deadline.
        """
        return self._enqueue(items, deadline or Deadline(math.inf)).future

    def run(self, items: Sequence[ItemT], deadline: Deadline, timing: Timing | None = None) -> list[OutT]:
        """Submit one caller's items and wait for their outputs until the deadline (`timing` says where it went).

        Raises:
            Overloaded, TooLarge: refused (see `submit`), or no answer by the deadline: then whatever of
                this work has not run yet is dropped.
        """
        entry = self._enqueue(items, deadline, timing)
        try:
            return entry.future.result(timeout=max(0.0, deadline.left()))
        except FutureTimeout:
            entry.failed = True  # the batcher skips what is left of it
            entry.future.cancel()
            raise Overloaded("the model did not answer in time; retry with fewer inputs",
                             retry_after_s=self._retry_after()) from None

    def admit(self, deadline: Deadline) -> None:
        """Refuse at once when the work already queued would outlast `deadline`: called before a request is
        tokenized, so that a flood of requests that cannot be served costs no tokenizing either.

        Raises:
            Overloaded: with the seconds until the backlog clears.
        """
        with self._cond:
            if self._draining or self._closed:
                raise Overloaded("the server is shutting down; retry on another instance", retry_after_s=1)
            ahead = self._seconds(self._backlog)
            if ahead > deadline.left():
                raise Overloaded(f"the server is busy: the work queued ahead needs about {ahead:.0f} s, more than "
                                 "this request may wait; retry later", retry_after_s=self._retry_after_locked())

    def drain(self, grace_s: float) -> tuple[int, int]:
        """Stop taking work; finish what was admitted where it fits in `grace_s`.

        Running callers keep `grace_s` at most. Queued ones are kept, in arrival order, while the measured cost of
        the work ahead of them and their own fits in `grace_s`; the rest are answered Overloaded (with Retry-After)
        at once, rather than at the end of the grace. Returns (kept, refused): the queued callers kept to finish and
        those refused.
        """
        with self._cond:
            self._draining = True
            cut = time.monotonic() + grace_s
            ahead = 0.0
            for entry in self._running.values():
                entry.deadline = entry.deadline.sooner(cut)
                ahead += self._seconds(entry.backlog)
            kept: list[_Entry] = []
            refused: list[_Entry] = []
            for entry in self._queue:
                need = self._seconds(entry.backlog)
                if not refused and ahead + need <= grace_s:
                    entry.deadline = entry.deadline.sooner(cut)
                    ahead += need
                    kept.append(entry)
                else:  # first come, first kept: nothing overtakes a caller that was refused
                    refused.append(entry)
                    self._pending_items -= len(entry.items)
                    self._forget(entry)
            self._queue = deque(kept)
            self._cond.notify_all()
        for entry in refused:
            self._fail(entry, Overloaded("the server is shutting down and cannot finish this in its remaining "
                                         "grace; retry on another instance", retry_after_s=1))
        return len(kept), len(refused)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)

    def calibrate(self, make_item: Callable[[int], ItemT], max_length: int, measured_as: Hashable = None) -> None:
        """Measure full passes at each length bucket up to `max_length` (at most CALIBRATION_LENGTH), so that
        admission judges the first requests by what passes cost here, not by the warm-up's one short text (whose
        per-token cost is mostly fixed overhead). `make_item(length)` builds one item of that many tokens.

        `measured_as`: what the passes' cost depends on (the model's files, device, threads, pass budget); a
        calibration this process already made of the same takes its figures back instead (None: always measure).
        """
        self.cost.reset()  # the warm-up's first pass also paid for lazy initialisation
        if measured_as is not None:
            with _CALIBRATIONS_LOCK:
                figures = _CALIBRATIONS.get(measured_as)
            if figures is not None:
                self.cost.restore(figures)
                return
        longest = min(max_length, CALIBRATION_LENGTH)
        lengths = [length for length in (8, 32, 128, 512) if length < longest] + [longest]
        for length in lengths:
            count = max(1, self._max_batch_tokens // length)
            self.run([make_item(length) for _ in range(count)], Deadline.after(600))
        if measured_as is not None:
            with _CALIBRATIONS_LOCK:
                _CALIBRATIONS[measured_as] = self.cost.snapshot()

    def backlog_seconds(self) -> float:
        """Estimated seconds of model time queued or running."""
        with self._cond:
            backlog = dict(self._backlog)
        return self._seconds(backlog)

    def foresee(self, lengths: Iterable[int], deadline: Deadline) -> None:
        """Refuse now work of these item lengths (tokens) that could not finish before `deadline`, before it is made:
        a kind calls it (through `foresee`) with what it knows of a request before its costly preparing (images'
        visual tokens, from their headers, before any pixel is decoded).

        Raises:
            TooLarge, Overloaded: as `submit` would for the same work.
        """
        lengths = list(lengths)
        backlog = _tokens_by_bucket(lengths)
        self._check_alone(backlog, len(lengths), deadline)
        with self._cond:
            ahead = self._seconds(self._backlog)
            if ahead + self._seconds(backlog) > deadline.left():
                raise Overloaded(
                    f"the server is busy: the work queued ahead needs about {ahead:.0f} s, so this request would "
                    "not finish in time; retry later", retry_after_s=self._retry_after_locked())

    def _seconds(self, backlog: dict[int, int]) -> float:
        """Estimated seconds for the lanes to clear `backlog` (each pass's measured cost is one lane's)."""
        return self.cost.seconds(backlog) / self._lanes

    def _check_alone(self, backlog: dict[int, int], items: int, deadline: Deadline) -> None:
        # one request's items share the lanes that are free; a single item takes one lane however many there are
        alone, left = self.cost.seconds(backlog, best=True) / max(1, min(self._lanes, items)), deadline.left()
        if alone > left:
            # parts filled to 80% of the time, so that each has room for the variance of a busy machine
            raise TooLarge(f"this request needs about {alone:.0f} s of model time, more than the {max(0.0, left):.0f} s "
                           f"it may take; split it into at least {math.ceil(alone / max(0.8 * left, 1e-3))} requests")

    def _enqueue(self, items: Sequence[ItemT], deadline: Deadline, timing: Timing | None = None) -> _Entry:
        future: Future = Future()
        entry = _Entry(items=items, future=future, deadline=deadline, timing=timing or Timing())
        if not items:
            future.set_result([])
            return entry
        self._check_alone(entry.backlog, len(items), deadline)
        with self._cond:
            if self._closed or self._draining:
                raise Overloaded("the server is shutting down; retry on another instance", retry_after_s=1)
            if self._pending_items + len(items) > self._max_pending_items:
                raise Overloaded(
                    f"the server has {self._pending_items} inputs waiting; retry shortly or send fewer inputs",
                    retry_after_s=self._retry_after_locked())
            ahead = self._seconds(self._backlog)
            if ahead + self._seconds(entry.backlog) > deadline.left():
                raise Overloaded(
                    f"the server is busy: the work queued ahead needs about {ahead:.0f} s, so this request would "
                    "not finish in time; retry later", retry_after_s=self._retry_after_locked())
            self._pending_items += len(items)
            for bucket, tokens in entry.backlog.items():
                self._backlog[bucket] = self._backlog.get(bucket, 0) + tokens
            self._queue.append(entry)
            self._cond.notify()
        return entry

    def _retry_after(self) -> int:
        with self._cond:
            return self._retry_after_locked()

    def _retry_after_locked(self) -> int:
        return max(1, math.ceil(self._seconds(self._backlog)))

    def _consume(self, slots: list[_Slot]) -> None:
        """These items ran (or failed): they are no longer work ahead of anyone."""
        with self._cond:
            for slot in slots:
                bucket, length = _bucket(slot.item.length), slot.item.length
                left = slot.entry.backlog.get(bucket, 0)
                if left <= 0:
                    continue  # already forgotten, or consumed by an earlier try of a failed pass
                taken = min(left, length)
                slot.entry.backlog[bucket] = left - taken
                self._backlog[bucket] = self._backlog.get(bucket, 0) - taken
                if self._backlog[bucket] <= 0:
                    self._backlog.pop(bucket, None)

    def _forget(self, entry: _Entry) -> None:
        """Take what is left of an entry out of the backlog (call with the lock held)."""
        for bucket, tokens in entry.backlog.items():
            left = self._backlog.get(bucket, 0) - tokens
            if left > 0:
                self._backlog[bucket] = left
            else:
                self._backlog.pop(bucket, None)
        entry.backlog = {}

    def _loop(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            take, chunk = job
            try:
                self._run_chunk(chunk)
            except BaseException as exc:  # a bug here must not kill a worker thread
                entries = list({id(slot.entry): slot.entry for slot in chunk}.values())
                logger.exception("batcher failed; failing %d requests", len(entries))
                for entry in entries:
                    self._fail(entry, ModelFailure(f"internal batching error: {type(exc).__name__}"))
            finally:
                self._finish(take)

    def _next(self) -> tuple[_Take, list[_Slot]] | None:
        """Block for a pass to run: one cut earlier and not yet run, or the first of those cut from a new take."""
        while True:
            dropped: list[_Entry] = []
            job = None
            with self._cond:
                if self._ready:
                    self._busy += 1
                    return self._ready.popleft()
                if not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                taken = self._take(dropped)
                if taken:
                    slots = [_Slot(entry, i) for entry in taken for i in range(len(entry.items))]
                    chunks = self._spread(self._chunks(slots), idle=self._lanes - self._busy)
                    take = _Take(taken, len(chunks))
                    self._running.update((id(entry), entry) for entry in taken)
                    self._ready.extend((take, chunk) for chunk in chunks[1:])
                    self._busy += 1
                    if len(chunks) > 1:
                        self._cond.notify_all()
                    job = take, chunks[0]
            for entry in dropped:  # answered outside the lock: the answer asks the backlog for its Retry-After
                self._drop(entry)
            if job is not None:
                return job

    def _finish(self, take: _Take) -> None:
        """One of the take's passes ended: once all have, its entries are no longer pending."""
        with self._cond:
            self._busy -= 1
            take.left -= 1
            if take.left == 0:
                self._pending_items -= sum(len(e.items) for e in take.entries)
                for entry in take.entries:
                    self._forget(entry)
                    self._running.pop(id(entry), None)
            idle = not self._queue and not self._ready and self._busy == 0
            due = idle and self._on_idle is not None and self._tokens_since_idle >= self._idle_after_tokens
            if due:
                self._tokens_since_idle = 0
        if due:
            self._on_idle()

    def _take(self, dropped: list[_Entry]) -> list[_Entry]:
        """Take what is queued, up to a few passes' worth, skipping cancelled callers and putting those whose deadline
        passed in `dropped` (called with the lock held, and something queued)."""
        # Under concurrent load the last pass's callers are sending their next requests right now:
        # a few ms gathers them into one pass instead of a trickle of small ones (32 clients x 1
        # text: +5-8% texts/s and 7% less CPU per text in bench/). A lone caller never waits.
        if self._last_callers > 1 and self._gather_s > 0:
            deadline = time.monotonic() + self._gather_s
            while len(self._queue) < self._last_callers and not self._closed and not self._ready:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        taken: list[_Entry] = []
        budget = 4 * self._max_batch_tokens
        while self._queue and (not taken or budget > 0):
            entry = self._queue.popleft()
            if entry.failed or not entry.future.set_running_or_notify_cancel():
                self._pending_items -= len(entry.items)
                self._forget(entry)
                continue
            if entry.deadline.expired():
                self._pending_items -= len(entry.items)
                self._forget(entry)
                dropped.append(entry)
                continue
            taken.append(entry)
            budget -= sum(item.length for item in entry.items)
        if taken:
            self._last_callers = len(taken)
        return taken

    @staticmethod
    def _spread(chunks: list[list[_Slot]], idle: int) -> list[list[_Slot]]:
        """Cut the longest passes in two (their items are sorted by length, so halves pad alike) until every idle
        lane has one, or no pass has two items left."""
        while len(chunks) < idle:
            widest = max(range(len(chunks)), key=lambda i: len(chunks[i]))
            chunk = chunks[widest]
            if len(chunk) < 2:
                break
            half = len(chunk) // 2
            chunks[widest:widest + 1] = [chunk[:half], chunk[half:]]
        return chunks

    def _chunks(self, slots: list[_Slot]) -> list[list[_Slot]]:
        """Cut length-sorted slots into passes of one group each, under the token and item bounds."""
        slots = sorted(slots, key=lambda s: (repr(s.item.group), s.item.length))
        chunks: list[list[_Slot]] = []
        current: list[_Slot] = []
        for slot in slots:
            if current:
                longest = max(current[-1].item.length, slot.item.length)
                if (
                    slot.item.group != current[-1].item.group
                    or longest * (len(current) + 1) > self._max_batch_tokens
                    or len(current) >= self._max_batch_items
                ):
                    chunks.append(current)
                    current = []
            current.append(slot)
        if current:
            chunks.append(current)
        return chunks

    def _run_chunk(self, chunk: list[_Slot]) -> None:
        # A pass that would end after a caller's deadline (at what passes cost now) computes an answer nobody
        # receives: that caller is answered now instead. On SIGTERM the grace's end is every caller's deadline, so
        # no pass starts that would hold the exit past it.
        longest = max(slot.item.length for slot in chunk)
        ends = time.monotonic() + self.cost.seconds({_bucket(longest): longest * len(chunk)})
        for entry in {id(slot.entry): slot.entry for slot in chunk}.values():
            if not entry.failed and (entry.deadline.expired() or entry.deadline.at < ends):
                self._drop(entry)
        chunk = [slot for slot in chunk if not slot.entry.failed]
        if not chunk:
            return
        entries = list({id(slot.entry): slot.entry for slot in chunk}.values())
        now = time.monotonic()
        for entry in entries:
            if not entry.started:
                entry.started = True
                entry.timing.queue_s = now - entry.enqueued_at
                if self._observer is not None:
                    self._observer.waited(entry.timing.queue_s)
        started = time.perf_counter()
        try:
            outputs = self._run([slot.item for slot in chunk])
            if len(outputs) != len(chunk):
                raise ModelFailure(f"forward pass returned {len(outputs)} outputs for {len(chunk)} inputs; this is a bug")
        except Exception as exc:
            self._isolate_failure(chunk, exc)
            return
        finally:
            with self._answers:
                self.passes += 1
            self._consume(chunk)
        longest = max(slot.item.length for slot in chunk)
        elapsed = time.perf_counter() - started
        self.cost.observe(longest, len(chunk), elapsed)
        with self._cond:
            self._tokens_since_idle += longest * len(chunk)
        with self._answers:  # a caller's passes may run at once on several lanes: its time in them is their union
            for entry in entries:
                entry.passes.append((started, started + elapsed))
                entry.timing.forward_s = _covered(entry.passes)
        if self._observer is not None:
            self._observer.pass_ran(len(chunk), longest * len(chunk), elapsed)
        for slot, output in zip(chunk, outputs):
            self._deliver(slot, output)

    def _isolate_failure(self, chunk: list[_Slot], exc: Exception) -> None:
        """Retry a failed pass caller by caller, so only the caller whose input fails is failed."""
        entries = list({id(slot.entry): slot.entry for slot in chunk}.values())
        if len(entries) == 1:
            if not isinstance(exc, HandlerError):
                logger.error("forward pass failed", exc_info=exc)
                exc = ModelFailure(f"the model failed on this input ({type(exc).__name__})")
            self._fail(entries[0], exc)
            return
        for entry in entries:
            self._run_chunk([slot for slot in chunk if slot.entry is entry])

    def _deliver(self, slot: _Slot, output: OutT) -> None:
        entry = slot.entry
        with self._answers:
            entry.outputs[slot.index] = output
            entry.remaining -= 1
            if entry.remaining == 0 and not entry.failed and not entry.future.done():
                entry.future.set_result(entry.outputs)

    def _drop(self, entry: _Entry) -> None:
        """Its caller stopped waiting (deadline, left, or shutting down): run nothing more of it."""
        self._fail(entry, Overloaded("the model did not answer in time; retry with fewer inputs",
                                     retry_after_s=self._retry_after()))

    def _fail(self, entry: _Entry, exc: BaseException) -> None:
        with self._answers:
            if not entry.failed and not entry.future.done():
                entry.failed = True
                entry.future.set_exception(exc)
