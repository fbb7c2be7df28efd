"""Replacement policies against textbook reference strings (pure: policy.py + frames.py).

The simulator below drives a policy exactly as the kernel does: a reference to a resident
page is a `touch`, a miss takes a free frame or the policy's victim."""
from __future__ import annotations

import random
from collections import OrderedDict

import pytest

from kernel_daemon.frames import FramePool
from kernel_daemon.policy import make_policy

BELADY = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5]
SILBERSCHATZ = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1]


def faults(policy_name: str, refs: list[int], nframes: int) -> int:
    """Count the misses of `refs` with `nframes` frames under the named policy."""
    pool, policy = FramePool(nframes), make_policy(policy_name)
    where: dict[int, int] = {}
    misses = 0
    for page in refs:
        if page in where:
            policy.touch(where[page])
            continue
        misses += 1
        frame = pool.alloc(0, page)
        if frame is None:
            victim = policy.victim()
            assert victim is not None
            policy.remove(victim)
            old = pool.owner(victim)[1]
            del where[old]
            pool.release(victim)
            frame = pool.alloc(0, page)
        where[page] = frame
        policy.insert(frame)
    return misses


def second_chance_reference(refs: list[int], nframes: int) -> int:
    """An independent textbook second-chance simulation (a circular list and a hand)."""
    frames: list[list[int]] = []          # [page, referenced]
    hand = misses = 0
    for page in refs:
        hit = next((f for f in frames if f[0] == page), None)
        if hit:
            hit[1] = 1
            continue
        misses += 1
        if len(frames) < nframes:
            frames.append([page, 0])
            continue
        while frames[hand][1]:
            frames[hand][1] = 0
            hand = (hand + 1) % nframes
        frames[hand] = [page, 0]
        hand = (hand + 1) % nframes
    return misses


def test_fifo_belady_anomaly() -> None:
    assert faults("fifo", BELADY, 3) == 9
    assert faults("fifo", BELADY, 4) == 10


def test_silberschatz_fifo_and_lru() -> None:
    assert faults("fifo", SILBERSCHATZ, 3) == 15
    assert faults("lru", SILBERSCHATZ, 3) == 12


def test_lru_has_no_belady_anomaly_on_belady_string() -> None:
    assert faults("lru", BELADY, 3) == 10
    assert faults("lru", BELADY, 4) == 8


@pytest.mark.parametrize("refs", [BELADY, SILBERSCHATZ, [1, 2, 1, 3, 1, 4, 1, 5, 2, 1]])
@pytest.mark.parametrize("nframes", [2, 3, 4])
def test_clock_matches_textbook_second_chance(refs: list[int], nframes: int) -> None:
    assert faults("clock", refs, nframes) == second_chance_reference(refs, nframes)


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("random")


class _Reference:
    """The policies as they were written over an OrderedDict (frame -> referenced bit): the
    array-backed ones must make exactly the same choices."""

    def __init__(self, name: str) -> None:
        self.name, self.q = name, OrderedDict[int, bool]()

    def insert(self, frame: int) -> None:
        self.q[frame] = False

    def insert_cold(self, frame: int) -> None:
        self.q[frame] = False
        self.q.move_to_end(frame, last=False)

    def remove(self, frame: int) -> None:
        self.q.pop(frame, None)

    def touch(self, frame: int) -> None:
        if frame in self.q and self.name == "lru":
            self.q.move_to_end(frame)
        elif frame in self.q and self.name == "clock":
            self.q[frame] = True

    def victim(self) -> int | None:
        while self.name == "clock" and self.q:
            frame, referenced = next(iter(self.q.items()))
            if not referenced:
                return frame
            self.q.move_to_end(frame)
            self.q[frame] = False
        return next(iter(self.q), None)


@pytest.mark.parametrize("name", ["fifo", "clock", "lru"])
def test_policies_choose_as_the_ordered_dict_reference_does(name: str) -> None:
    rng = random.Random(name)
    policy, ref = make_policy(name), _Reference(name)
    for _ in range(20000):
        op, frame = rng.randrange(5), rng.randrange(40)
        if op == 4:
            policy.insert_cold(frame)
            ref.insert_cold(frame)
        elif op == 0:
            policy.insert(frame)
            ref.insert(frame)
        elif op == 1:
            policy.remove(frame)
            ref.remove(frame)
        elif op == 2:
            policy.touch(frame)
            ref.touch(frame)
        else:
            assert policy.victim() == ref.victim()
