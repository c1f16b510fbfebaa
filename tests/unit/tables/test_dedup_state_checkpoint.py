"""`DedupStore.checkpoint`: the changelog first (acked), then RocksDB in one write batch with the
offset Faust's recovery resumes from. A real Faust table on a real RocksDB; the changelog is a
fake, because its failures (a broker that never acks) are what is being tested."""

from __future__ import annotations

from pathlib import Path

import faust
import pytest

from tables.dedup_state import DedupState, DedupStore, decode_state, encode_positions, encode_state, make_table, positions_key, state_key
from tables.hot_cache import HotCache


class FakeChangelog:
    """Records what was sent; offsets continue per partition like a broker's; can be made to fail."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes, bytes | None]] = []
        self.next_offset: dict[int, int] = {}
        self.fail = False

    async def send(self, records: list[tuple[int, bytes, bytes | None]]) -> dict[int, int]:
        if self.fail:
            raise ConnectionError("broker unreachable")
        offsets = {}
        for partition, key, value in records:
            self.sent.append((partition, key, value))
            offsets[partition] = self.next_offset.get(partition, 0)
            self.next_offset[partition] = offsets[partition] + 1
        return offsets


class Event:
    def __init__(self, partition: int) -> None:
        self.message = type("Message", (), {"partition": partition})()


@pytest.fixture
def table(tmp_path: Path) -> faust.Table:
    app = faust.App("checkpoint-test", store="rocksdb://", datadir=str(tmp_path), broker="kafka://127.0.0.1:1")
    return make_table(app, 4)


def state(n: int) -> DedupState:
    return DedupState(f"hash-{n}", "firing", n, n, n)


def on_disk(table: faust.Table, partition: int, key: bytes) -> DedupState | None:
    raw = table.data._db_for_partition(partition).get(key)
    return decode_state(raw) if raw is not None else None


async def test_changes_reach_the_changelog_then_rocksdb_with_the_resume_offset(table: faust.Table) -> None:
    changelog = FakeChangelog()
    store = DedupStore(table, changelog)
    a, b, c = state_key("t", "a"), state_key("t", "b"), state_key("t", "c")
    await store.checkpoint({a: (state(1), 0), b: (state(2), 0), c: (state(3), 3)})
    assert sorted(changelog.sent) == sorted([(0, a, encode_state(state(1))), (0, b, encode_state(state(2))), (3, c, encode_state(state(3)))])
    assert (on_disk(table, 0, a), on_disk(table, 0, b), on_disk(table, 3, c)) == (state(1), state(2), state(3))
    assert on_disk(table, 3, a) is None  # each key in its own partition's store
    offset_key = table.data.offset_key
    assert table.data._db_for_partition(0).get(offset_key) == b"1"  # the last changelog offset of partition 0
    assert table.data._db_for_partition(3).get(offset_key) == b"0"
    assert store.get(c, Event(3)) == state(3)


async def test_a_failed_changelog_send_leaves_rocksdb_and_the_cache_untouched(table: faust.Table) -> None:
    changelog = FakeChangelog()
    store = DedupStore(table, changelog, cache=HotCache(100))
    key = state_key("t", "a")
    await store.checkpoint({key: (state(1), 1)})
    changelog.fail = True
    with pytest.raises(ConnectionError):
        await store.checkpoint({key: (state(2), 1)})
    assert on_disk(table, 1, key) == state(1)
    assert store.get(key, Event(1)) == state(1)  # the batch is retried from the old state
    assert table.data._db_for_partition(1).get(table.data.offset_key) == b"0"


async def test_a_delete_is_a_tombstone_and_leaves_the_cache(table: faust.Table) -> None:
    changelog = FakeChangelog()
    store = DedupStore(table, changelog, cache=HotCache(100))
    key = state_key("t", "old")
    await store.checkpoint({key: (state(1), 2)})
    await store.checkpoint({key: (None, 2)})
    assert changelog.sent[-1] == (2, key, None)
    assert on_disk(table, 2, key) is None and store.get(key, Event(2)) is None


async def test_expired_scans_in_budgets_and_resumes(table: faust.Table) -> None:
    store = DedupStore(table, FakeChangelog())
    keys = [state_key("t", f"k{i}") for i in range(10)]
    await store.checkpoint({k: (DedupState("h", "firing", 0, 0, 1000 if i % 2 else 0), 0) for i, k in enumerate(keys)})
    first = store.expired(0, now_ms=2000, ttl_ms=1500, budget=6)
    second = store.expired(0, now_ms=2000, ttl_ms=1500, budget=6)
    assert sorted(first + second) == sorted(keys[0::2])  # seen at 0: expired; seen at 1000: alive
    assert len(first) <= 6 and set(first).isdisjoint(second)


async def test_a_full_pass_rests_for_a_hundredth_of_the_ttl(table: faust.Table) -> None:
    """After a full pass the partition is not scanned again for 1% of the TTL: a key that expires
    meanwhile is found by the next pass, not by a scan in a loop."""
    store = DedupStore(table, FakeChangelog())
    ttl = 100_000  # a rest of 1,000 ms
    old, later = state_key("t", "old"), state_key("t", "later")
    await store.checkpoint({old: (DedupState("h", "firing", 0, 0, 0), 0), later: (DedupState("h", "firing", 0, 0, 20_500), 0)})
    assert store.expired(0, now_ms=120_000, ttl_ms=ttl, budget=10) == [old]  # the pass ends: rest until 121,000
    await store.checkpoint({old: (None, 0)})
    assert store.expired(0, now_ms=120_600, ttl_ms=ttl, budget=10) == []  # `later` expired at 120,500, but resting
    assert store.expired(0, now_ms=121_000, ttl_ms=ttl, budget=10) == [later]  # the next pass
    store.forget_partitions({0})  # after a rebalance the partition's rest is forgotten too
    assert store.expired(0, now_ms=121_001, ttl_ms=ttl, budget=10) == [later]


async def test_a_key_refreshed_after_the_scan_began_is_not_expired(table: faust.Table) -> None:
    """A scan resumes on the snapshot of its start; a sighting since then refreshed the key."""
    store = DedupStore(table, FakeChangelog())
    keys = [state_key("t", f"k{i}") for i in range(4)]
    await store.checkpoint({k: (DedupState("h", "firing", 0, 0, 0), 0) for k in keys})
    first = store.expired(0, now_ms=2000, ttl_ms=1500, budget=1)
    rest = [k for k in keys if k not in first]
    await store.checkpoint({k: (DedupState("h", "firing", 0, 0, 1900), 0) for k in rest})  # seen again
    assert store.expired(0, now_ms=2000, ttl_ms=1500, budget=10) == []


async def test_flow_positions_are_written_with_the_state_and_never_swept(table: faust.Table) -> None:
    changelog = FakeChangelog()
    store = DedupStore(table, changelog)
    a = state_key("t", "a")
    await store.checkpoint({a: (DedupState("h", "firing", 0, 0, 0), 1)}, {1: {"alerts:0": 7, "alerts:1": 3}}, lane="!")
    assert (1, positions_key("!"), encode_positions({"alerts:0": 7, "alerts:1": 3})) in changelog.sent
    assert DedupStore(table, changelog).flow_positions(1, "!") == {"alerts:0": 7, "alerts:1": 3}  # from RocksDB
    assert store.flow_positions(1, "") == {} and store.flow_positions(2, "!") == {}
    assert store.expired(1, now_ms=10_000, ttl_ms=1, budget=10) == [a]  # not the positions row
    await store.checkpoint({}, {1: {"alerts:0": 8}})  # positions alone are written too
    assert store.flow_positions(1, "") == {"alerts:0": 8}
    store.forget_partitions({1})  # after a rebalance: read again from RocksDB
    assert store.flow_positions(1, "!") == {"alerts:0": 7, "alerts:1": 3}


async def test_nothing_to_write_sends_nothing(table: faust.Table) -> None:
    changelog = FakeChangelog()
    await DedupStore(table, changelog).checkpoint({})
    assert changelog.sent == []
