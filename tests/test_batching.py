"""The batcher alone, with a forward function the test controls (the model is not under test here)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from model_handlers.batching import Batcher
from model_handlers.deadline import Deadline
from model_handlers.errors import ModelFailure, Overloaded, TooLarge


@dataclass(frozen=True)
class Item:
    value: int
    length: int = 10
    group: str = "g"


class ControlledForward:
    """Records each pass; can hold the first pass until released, and poison chosen values."""

    def __init__(self, hold_first: bool = False, poison: frozenset[int] = frozenset()):
        self.passes: list[list[int]] = []
        self.release = threading.Event()
        self.started = threading.Event()
        self.hold_first = hold_first
        self.poison = poison

    def __call__(self, items: list[Item]) -> list[int]:
        self.passes.append([item.value for item in items])
        self.started.set()
        if self.hold_first and len(self.passes) == 1:
            assert self.release.wait(10)
        if any(item.value in self.poison for item in items):
            raise RuntimeError("poisoned input")
        return [item.value * 10 for item in items]


def test_concurrent_callers_share_passes_and_get_their_own_rows():
    forward = ControlledForward(hold_first=True)
    batcher = Batcher(forward)
    first = batcher.submit([Item(0)])
    assert forward.started.wait(5)
    # 31 more callers arrive while the first pass runs: they must share the next pass.
    futures = [batcher.submit([Item(i), Item(100 + i)]) for i in range(1, 32)]
    forward.release.set()
    assert first.result(5) == [0]
    for i, future in enumerate(futures, start=1):
        assert future.result(5) == [i * 10, (100 + i) * 10]
    assert len(forward.passes) == 2
    batcher.close()


def test_passes_respect_the_padded_token_budget_and_sort_by_length():
    forward = ControlledForward(hold_first=True)
    batcher = Batcher(forward, max_batch_tokens=100)
    blocker = batcher.submit([Item(-1)])
    assert forward.started.wait(5)
    lengths = [50, 10, 40, 10, 20, 50]
    future = batcher.submit([Item(i, length=n) for i, n in enumerate(lengths)])
    forward.release.set()
    assert blocker.result(5) == [-10]
    assert future.result(5) == [i * 10 for i in range(len(lengths))]
    for batch in forward.passes[1:]:
        longest = max(lengths[v] for v in batch)
        assert longest * len(batch) <= 100
        assert [lengths[v] for v in batch] == sorted(lengths[v] for v in batch)
    batcher.close()


def test_groups_never_share_a_pass():
    forward = ControlledForward(hold_first=True)
    batcher = Batcher(forward)
    blocker = batcher.submit([Item(-1)])
    assert forward.started.wait(5)
    a = batcher.submit([Item(1, group="a"), Item(2, group="b")])
    b = batcher.submit([Item(3, group="a")])
    forward.release.set()
    blocker.result(5)
    assert a.result(5) == [10, 20] and b.result(5) == [30]
    assert sorted(sorted(p) for p in forward.passes[1:]) == [[1, 3], [2]]
    batcher.close()


def test_a_failing_input_fails_only_its_own_caller():
    forward = ControlledForward(hold_first=True, poison=frozenset({7}))
    batcher = Batcher(forward)
    blocker = batcher.submit([Item(-1)])
    assert forward.started.wait(5)
    good = [batcher.submit([Item(i)]) for i in (1, 2, 3)]
    bad = batcher.submit([Item(7), Item(8)])
    forward.release.set()
    blocker.result(5)
    assert [f.result(5) for f in good] == [[10], [20], [30]]
    with pytest.raises(ModelFailure, match="RuntimeError"):
        bad.result(5)
    batcher.close()


def test_wrong_output_count_is_reported_as_a_bug():
    batcher = Batcher(lambda items: [1])
    future = batcher.submit([Item(1), Item(2)])
    with pytest.raises(ModelFailure, match="this is a bug"):
        future.result(5)
    batcher.close()


def test_full_queue_refuses_at_once_and_cancelled_callers_are_skipped():
    forward = ControlledForward(hold_first=True)
    batcher = Batcher(forward, max_pending_items=3)
    blocker = batcher.submit([Item(0)])
    assert forward.started.wait(5)
    cancelled = batcher.submit([Item(1)])
    kept = batcher.submit([Item(2)])
    with pytest.raises(Overloaded):
        batcher.submit([Item(3), Item(4)])
    assert cancelled.cancel()
    forward.release.set()
    assert blocker.result(5) == [0] and kept.result(5) == [20]
    assert all(1 not in p for p in forward.passes)
    batcher.close()


def test_empty_submission_resolves_without_a_pass():
    forward = ControlledForward()
    batcher = Batcher(forward)
    assert batcher.submit([]).result(1) == []
    assert forward.passes == []
    batcher.close()


def test_run_waits_for_the_outputs_and_turns_a_timeout_into_overloaded():
    forward = ControlledForward(hold_first=True)
    batcher = Batcher(forward)
    with pytest.raises(Overloaded, match="did not answer in time"):
        batcher.run([Item(1)], Deadline.after(0.2))
    forward.release.set()
    assert batcher.run([Item(2)], Deadline.after(5)) == [20]
    batcher.close()


def test_work_whose_deadline_passed_or_whose_caller_left_never_reaches_the_model():
    forward = ControlledForward(hold_first=True)
    batcher = Batcher(forward)
    blocker = batcher.submit([Item(0)])
    assert forward.started.wait(5)
    late = batcher.submit([Item(1)], Deadline.after(0.05))
    left = threading.Event()
    gone = batcher.submit([Item(2)], Deadline.after(60, abandoned=left.is_set))
    kept = batcher.submit([Item(3)], Deadline.after(60))
    left.set()
    threading.Event().wait(0.1)
    forward.release.set()
    assert blocker.result(5) == [0] and kept.result(5) == [30]
    for future in (late, gone):
        with pytest.raises(Overloaded):
            future.result(5)
    assert all(1 not in p and 2 not in p for p in forward.passes)
    batcher.close()


def test_a_caller_that_stopped_waiting_gets_nothing_more_computed():
    forward = ControlledForward(hold_first=True)
    batcher = Batcher(forward, max_batch_tokens=10)  # one item per pass
    outcome: list[object] = []  # recorded in the worker, asserted here: pytest.raises in a thread cannot fail the test

    def caller() -> None:
        try:
            outcome.append(batcher.run([Item(i) for i in range(1, 6)], Deadline.after(0.3)))
        except Exception as error:  # noqa: BLE001 - the type is the assertion below
            outcome.append(error)

    worker = threading.Thread(target=caller)
    worker.start()
    assert forward.started.wait(5)
    worker.join(5)  # the caller gave up while its first pass was held
    assert not worker.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], Overloaded), outcome
    forward.release.set()
    assert batcher.run([Item(9)], Deadline.after(5)) == [90]
    assert forward.passes == [[1], [9]]
    batcher.close()


def test_work_that_alone_cannot_finish_in_time_is_refused_up_front_by_its_best_measured_cost():
    batcher = Batcher(ControlledForward())
    batcher.cost.observe(longest=10, count=1, seconds=1.0)  # 0.1 s a token at best
    with pytest.raises(TooLarge, match=r"about 10 s .* split it into at least 3 requests"):
        batcher.submit([Item(i) for i in range(10)], Deadline.after(5))
    assert batcher.submit([Item(1)], Deadline.after(5)).result(5) == [10]
    batcher.close()


def test_a_backlog_that_would_outlast_the_deadline_is_refused_at_once_with_retry_after():
    forward = ControlledForward(hold_first=True)
    batcher = Batcher(forward)
    blocker = batcher.submit([Item(0)])
    assert forward.started.wait(5)
    batcher.cost.observe(longest=10, count=1, seconds=0.1)  # 0.01 s a token
    queued = batcher.submit([Item(i) for i in range(1, 101)], Deadline.after(60))  # 1000 tokens ahead: ~10 s
    with pytest.raises(Overloaded, match="queued ahead needs about 10 s") as refused:
        batcher.submit([Item(200)], Deadline.after(2))
    assert refused.value.retry_after_s >= 10
    assert batcher.backlog_seconds() == pytest.approx(10.1, rel=0.05)
    forward.release.set()
    assert blocker.result(5) == [0] and queued.result(5) == [i * 10 for i in range(1, 101)]
    assert batcher.backlog_seconds() == 0
    batcher.close()


def test_drain_finishes_admitted_work_that_fits_the_grace_and_refuses_the_rest_at_once():
    forward = ControlledForward(hold_first=True)
    batcher = Batcher(forward)
    running = batcher.submit([Item(0)], Deadline.after(60))
    assert forward.started.wait(5)
    batcher.cost.observe(longest=10, count=1, seconds=0.1)  # 0.01 s a token: each queued caller below needs ~1 s
    queued = [batcher.submit([Item(100 * n + i) for i in range(10)], Deadline.after(60)) for n in range(1, 6)]
    # 0.1 s running + 3 x 1 s fit a 3.5 s grace; the 4th and 5th do not, and nothing overtakes them
    assert batcher.drain(grace_s=3.5) == (3, 2)
    for refused in queued[3:]:
        with pytest.raises(Overloaded, match="shutting down") as answer:
            refused.result(0.5)  # at once, not at the end of the grace
        assert answer.value.retry_after_s >= 1
    with pytest.raises(Overloaded, match="shutting down"):
        batcher.submit([Item(2)])
    forward.release.set()
    assert running.result(5) == [0]
    for n, kept in enumerate(queued[:3], start=1):
        assert kept.result(5) == [(100 * n + i) * 10 for i in range(10)]
    batcher.close()


def test_drain_cuts_admitted_work_at_the_end_of_the_grace():
    forward = ControlledForward(hold_first=True)
    batcher = Batcher(forward)
    running = batcher.submit([Item(0)], Deadline.after(60))
    assert forward.started.wait(5)
    queued = batcher.submit([Item(1)], Deadline.after(60))  # nothing measured yet: kept, but only for the grace
    assert batcher.drain(grace_s=0.2) == (1, 0)
    time.sleep(0.4)
    forward.release.set()
    assert running.result(5) == [0]  # already in its pass when the grace ended
    with pytest.raises(Overloaded):
        queued.result(5)
    assert forward.passes == [[0]], "work past the grace never reaches the model"
    batcher.close()


def test_a_pass_that_would_end_after_the_deadline_is_not_started():
    """On SIGTERM the grace's end is the deadline: a pass that cannot end by it would hold the exit past it (make soak
    measured 25.6 s from SIGTERM to exit with a 20 s grace, passes started late running on)."""
    forward = ControlledForward(hold_first=True)
    batcher = Batcher(forward)
    running = batcher.submit([Item(0)], Deadline.after(60))
    assert forward.started.wait(5)
    batcher.cost.observe(longest=10, count=1, seconds=1.0)  # 0.1 s a token: a pass of one item takes ~1 s
    late = batcher.submit([Item(1)], Deadline.after(60))
    fits = batcher.submit([Item(2, group="other")], Deadline.after(60))
    assert batcher.drain(grace_s=2.5) == (1, 1)  # ~1 s running + 1 s for one more fit; a third second does not
    time.sleep(1.8)  # the running pass ends 1.8 s into the 2.5 s grace, later than measured: 1 s no longer fits
    forward.release.set()
    assert running.result(5) == [0]
    for refused in (late, fits):
        with pytest.raises(Overloaded):
            refused.result(5)
    assert forward.passes == [[0]], "no pass started that would end after the grace"
    batcher.close()


def test_on_idle_runs_when_the_queue_runs_dry_after_enough_work():
    idle = threading.Event()
    batcher = Batcher(ControlledForward(), on_idle=idle.set, idle_after_tokens=50)
    batcher.submit([Item(1)]).result(5)
    assert not idle.wait(0.2)  # 10 tokens: not worth it
    batcher.submit([Item(i) for i in range(5)]).result(5)
    assert idle.wait(5)
    batcher.close()


def test_a_calibration_is_measured_once_per_process_for_what_it_measured():
    """Calibration runs a full pass at each length up to the longest; a second batcher calibrating the same thing (the
    same model files loaded again) takes the first one's figures instead of running passes, and anything else
    measures its own."""
    first_forward, second_forward, other_forward = ControlledForward(), ControlledForward(), ControlledForward()
    key = ("model files", object())  # an object of this test alone: no other test's calibration can match
    first = Batcher(first_forward, max_batch_tokens=64)
    first.calibrate(lambda length: Item(length, length=length), 64, key)
    # lengths 8, 32 and 64: 64 // length items each
    assert [len(p) for p in first_forward.passes] == [8, 2, 1]
    tokens = {3: 800}  # 800 tokens of the 8-token bucket (5..8 tokens)
    measured, measured_best = first.cost.seconds(tokens), first.cost.seconds(tokens, best=True)
    assert measured > 0
    second = Batcher(second_forward, max_batch_tokens=64)
    second.calibrate(lambda length: Item(length, length=length), 64, key)
    assert second_forward.passes == []
    assert second.cost.seconds(tokens) == measured and second.cost.seconds(tokens, best=True) == measured_best
    # what the second batcher observes later is its own: the first's figures are not moved by it
    second.cost.observe(longest=8, count=1, seconds=100.0)
    assert first.cost.seconds(tokens) == measured
    other = Batcher(other_forward, max_batch_tokens=64)
    other.calibrate(lambda length: Item(length, length=length), 64, ("other model files", object()))
    assert [len(p) for p in other_forward.passes] == [8, 2, 1]
    unkeyed_forward = ControlledForward()
    unkeyed = Batcher(unkeyed_forward, max_batch_tokens=64)
    unkeyed.calibrate(lambda length: Item(length, length=length), 64)
    assert [len(p) for p in unkeyed_forward.passes] == [8, 2, 1]
    for batcher in (first, second, other, unkeyed):
        batcher.close()


def test_a_bucket_longer_than_every_measured_one_costs_more_per_token_as_lengths_grow():
    """Between the two longest measured buckets the cost per token rises linearly in the length; past them it goes on
    rising (a 32k-token input is not judged at an 8k one's rate); below them a bucket borrows its nearest neighbour."""
    from model_handlers.batching import PassCost

    cost = PassCost()
    cost.observe(longest=4096, count=1, seconds=4096 * 1e-4)  # bucket 12: 1e-4 s a token
    cost.observe(longest=8192, count=1, seconds=8192 * 2e-4)  # bucket 13: 2e-4 s a token
    # 32768 tokens (bucket 15): 2e-4 + (2e-4 - 1e-4) / 4096 * (32768 - 8192) = 8e-4 s a token
    assert cost.seconds({15: 32768}) == pytest.approx(32768 * 8e-4)
    assert cost.seconds({15: 32768}, best=True) == pytest.approx(32768 * 8e-4)
    assert cost.seconds({3: 8}) == pytest.approx(8 * 1e-4)  # bucket 3 borrows bucket 12's
    # a cost that falls with the length is not extrapolated downwards
    falling = PassCost()
    falling.observe(longest=4096, count=1, seconds=4096 * 3e-4)
    falling.observe(longest=8192, count=1, seconds=8192 * 2e-4)
    assert falling.seconds({15: 32768}) == pytest.approx(32768 * 2e-4)


def test_calibration_stops_at_8192_tokens_a_pass():
    forward = ControlledForward()
    batcher = Batcher(forward, max_batch_tokens=1024)
    batcher.calibrate(lambda length: Item(length, length=length), 32768)
    # lengths 8, 32, 128, 512 and 8192: 1024 // length items each (at least one)
    assert [len(p) for p in forward.passes] == [128, 32, 8, 2, 1]
    assert [forward_pass[0] for forward_pass in forward.passes][-1] == 8192
    batcher.close()


class HeldForward:
    """Every pass waits until released (a lane stays busy), counting the passes running at once."""

    def __init__(self):
        self.release = threading.Event()
        self.running = 0
        self.most_at_once = 0
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, items: list[Item]) -> list[int]:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.threads.add(threading.current_thread().name)
        try:
            assert self.release.wait(10)
            return [item.value * 10 for item in items]
        finally:
            with self._lock:
                self.running -= 1


def test_one_callers_items_are_shared_out_to_every_idle_lane():
    """Lanes run passes at once; one caller's items are cut so that both of two idle lanes get a pass."""
    barrier = threading.Barrier(2, timeout=5)  # passes only when two passes run at once

    def forward(items: list[Item]) -> list[int]:
        barrier.wait()
        return [item.value * 10 for item in items]

    batcher = Batcher(forward, lanes=2)
    assert batcher.run([Item(i, length=3 + i) for i in range(5)], Deadline.after(10)) == [0, 10, 20, 30, 40]
    assert batcher.passes == 2
    batcher.close()


def test_many_callers_on_three_lanes_each_get_their_own_rows():
    forward = ControlledForward()
    batcher = Batcher(forward, max_batch_tokens=40, lanes=3)
    answers: dict[int, list[int]] = {}

    def caller(n: int) -> None:
        answers[n] = batcher.run([Item(100 * n + i, length=1 + (n + i) % 9) for i in range(n % 5 + 1)],
                                 Deadline.after(20))

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert answers == {n: [(100 * n + i) * 10 for i in range(n % 5 + 1)] for n in range(40)}
    assert sorted(v for p in forward.passes for v in p) == sorted(100 * n + i for n in range(40) for i in range(n % 5 + 1))
    batcher.close()


@pytest.mark.parametrize("lanes, admitted", [(1, False), (2, True)])
def test_the_work_ahead_clears_as_many_times_as_fast_as_there_are_lanes(lanes, admitted):
    forward = HeldForward()
    batcher = Batcher(forward, lanes=lanes)
    batcher.cost.observe(longest=10, count=1, seconds=0.1)  # 0.01 s a token
    running = [batcher.submit([Item(n)], Deadline.after(60)) for n in range(lanes)]
    deadline = time.monotonic() + 5
    while forward.running < lanes and time.monotonic() < deadline:
        time.sleep(0.01)
    queued = batcher.submit([Item(10 + i) for i in range(10)], Deadline.after(60))
    # ahead: (10 * lanes running + 100 queued) tokens at 0.01 s: 1.1 s on one lane; 1.2 s on two, cleared in 0.6 s
    if admitted:
        batcher.admit(Deadline.after(0.9))
    else:
        with pytest.raises(Overloaded):
            batcher.admit(Deadline.after(0.9))
    forward.release.set()
    assert [r.result(5) for r in running] == [[n * 10] for n in range(lanes)]
    assert queued.result(5) == [(10 + i) * 10 for i in range(10)]
    assert forward.most_at_once == lanes
    batcher.close()


def test_a_single_input_is_judged_on_one_lane_however_many_there_are():
    batcher = Batcher(ControlledForward(), lanes=2)
    batcher.cost.observe(longest=100, count=1, seconds=1.0)  # 0.01 s a token, at best
    with pytest.raises(TooLarge):  # one 100-token input: 1 s on one lane
        batcher.run([Item(1, length=100)], Deadline.after(0.8))
    # two 50-token inputs: 0.5 s each, on two lanes at once
    assert batcher.run([Item(1, length=50), Item(2, length=50)], Deadline.after(0.8)) == [10, 20]
    batcher.close()


def test_a_callers_time_in_passes_that_ran_at_once_counts_once():
    """Its two passes run side by side for 0.3 s each: 0.3 s in passes, not 0.6 (the request log's forward_ms must
    not exceed its total)."""
    barrier = threading.Barrier(2, timeout=5)

    def forward(items: list[Item]) -> list[int]:
        barrier.wait()
        time.sleep(0.3)
        return [item.value for item in items]

    from model_handlers.batching import Timing

    batcher = Batcher(forward, lanes=2)
    timing = Timing()
    started = time.monotonic()
    assert batcher.run([Item(1), Item(2)], Deadline.after(10), timing) == [1, 2]
    assert 0.3 <= timing.forward_s <= time.monotonic() - started < 0.55
    batcher.close()
