"""Bloom filters: no false negatives, the measured false-positive rate, TTL rotation."""

from __future__ import annotations

import random

import pytest

from tables.bloom import BloomFilter, PartitionBlooms, RotatingBloomFilter, optimal_size


def random_keys(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(24) for _ in range(n)]


def add_all(bf: BloomFilter, keys) -> None:  # noqa: ANN001
    for key in keys:
        bf.add(key)


def test_sizing_follows_the_formulas() -> None:
    assert optimal_size(100_000, 0.01) == (958_506, 7)
    assert optimal_size(1_000_000, 0.001) == (14_377_588, 10)
    with pytest.raises(ValueError):
        optimal_size(0, 0.01)
    with pytest.raises(ValueError):
        optimal_size(10, 1.0)


@pytest.mark.parametrize("target", [0.01, 0.001])
def test_measured_false_positive_rate_on_100k_random_keys(target: float) -> None:
    bf = BloomFilter(100_000, target)
    keys = random_keys(100_000, seed=1)
    add_all(bf, keys)
    assert all(k in bf for k in keys)  # never a false negative
    probes = random_keys(100_000, seed=2)
    measured = sum(1 for k in probes if k in bf) / len(probes)
    assert target / 1.5 <= measured <= target * 1.5, measured
    assert target / 1.5 <= bf.fp_rate_estimate() <= target * 1.5


def test_structured_keys_are_hashed_as_well() -> None:
    """Dedup keys look alike (tenant \\0 sequential ids): the rate must hold for them too."""
    bf = BloomFilter(50_000, 0.01)
    add_all(bf, (f"default\x00alert-{i:08d}".encode() for i in range(50_000)))
    fp = sum(1 for i in range(50_000, 100_000) if f"default\x00alert-{i:08d}".encode() in bf) / 50_000
    assert fp <= 0.015


def test_str_and_bytes_keys_are_the_same_key() -> None:
    bf = BloomFilter(100, 0.01)
    assert bf.add("tenant\x00fp") is True
    assert b"tenant\x00fp" in bf
    assert bf.add(b"tenant\x00fp") is False  # not new


def test_clear() -> None:
    bf = BloomFilter(100, 0.01)
    bf.add(b"x")
    bf.clear()
    assert b"x" not in bf and bf.bits_set() == 0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_rotation_forgets_an_inactive_key_between_half_ttl_and_ttl() -> None:
    clock = Clock()
    rb = RotatingBloomFilter(1_000, 0.01, ttl_s=100, clock=clock)
    rb.add(b"early")            # at the start of a generation
    clock.now += 49
    rb.add(b"late")             # at its end
    clock.now += 1              # t=50: first rotation; both in `previous`
    assert b"early" in rb and b"late" in rb
    clock.now += 49.9           # t=99.9
    assert b"early" in rb and b"late" in rb
    clock.now += 0.1            # t=100: second rotation: early (100 s old) and late (51 s old) are gone
    assert b"early" not in rb and b"late" not in rb


def test_an_active_key_stays() -> None:
    clock = Clock()
    rb = RotatingBloomFilter(1_000, 0.01, ttl_s=10, clock=clock)
    for _ in range(50):
        rb.add(b"hot")
        clock.now += 4
        assert b"hot" in rb
    assert b"cold" not in rb


def test_idle_for_a_whole_ttl_forgets_everything_and_stays_on_the_grid() -> None:
    clock = Clock()
    rb = RotatingBloomFilter(1_000, 0.01, ttl_s=10, clock=clock)
    rb.add(b"k")
    clock.now += 27               # three half periods later, with no operation in between
    assert b"k" not in rb
    rb.add(b"k2")                 # added at 27 s, in the generation started at 25 s
    clock.now += 7.9              # 34.9 s: still within that generation + one half period
    assert b"k2" in rb
    clock.now += 0.1              # 35 s: two grid points after 25 s
    assert b"k2" not in rb


def test_rotating_fp_rate() -> None:
    clock = Clock()
    rb = RotatingBloomFilter(20_000, 0.01, ttl_s=60, clock=clock)
    add_all(rb.current, random_keys(20_000, seed=6))
    clock.now += 30
    keys = random_keys(20_000, seed=7)
    for k in keys:
        rb.add(k)
    probes = random_keys(50_000, seed=8)
    measured = sum(1 for k in probes if k in rb) / len(probes)
    assert measured <= 0.015 and rb.fp_rate_estimate() <= 0.015
    clock.now += 30  # the keys added in the last half period outlive the next rotation
    assert sum(1 for k in keys if k in rb) == len(keys)
    clock.now += 30
    assert sum(1 for k in keys if k in rb) <= len(keys) * 0.02


def test_partition_blooms_answer_maybe_until_built() -> None:
    pb = PartitionBlooms(1_000, 0.01)
    assert pb.may_contain(0, b"k") and not pb.ready(0)
    pb.add(0, b"k")  # ignored: a filter that missed keys would lie
    assert pb.build(0, [b"a", b"b"]) == 2
    assert pb.may_contain(0, b"a") and not pb.may_contain(0, b"zzz")
    pb.add(0, b"zzz")
    assert pb.may_contain(0, b"zzz")
    assert pb.may_contain(1, b"zzz")  # another partition, not built
    pb.drop_partition(0)
    assert pb.may_contain(0, b"nothing") and not pb.ready(0)
    assert pb.skipped_reads == 1


def test_partition_blooms_with_ttl() -> None:
    clock = Clock()
    pb = PartitionBlooms(10, 0.01, ttl_s=10, clock=clock)
    pb.build(3, [b"k"])
    assert pb.may_contain(3, b"k")
    clock.now += 10
    assert not pb.may_contain(3, b"k")
