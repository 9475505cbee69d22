"""The batcher alone, with a forward function the test controls (the model is not under test here)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from model_handlers.batching import Batcher
from model_handlers.errors import ModelFailure, Overloaded


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
    with pytest.raises(Overloaded, match="did not answer within 0.2 s"):
        batcher.run([Item(1)], timeout_s=0.2)
    forward.release.set()
    assert batcher.run([Item(2)], timeout_s=5) == [20]
    batcher.close()
