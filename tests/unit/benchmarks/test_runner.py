"""The runner's arithmetic on what it measured (benchmarks/runner.py)."""

from __future__ import annotations

import pytest

from benchmarks.runner import _index_latency, _target, refresh_interval_s
from config.settings import Settings


def test_a_refresh_interval_in_seconds() -> None:
    assert refresh_interval_s("1s") == 1.0
    assert refresh_interval_s("500ms") == 0.5
    assert refresh_interval_s("2m") == 120.0
    assert refresh_interval_s("-1") is None
    with pytest.raises(ValueError):
        refresh_interval_s("soon")


def test_searchable_is_bounded_by_indexed_plus_one_refresh() -> None:
    buckets = {"1.0": 50, "3.0": 100, "+Inf": 100, "count": 100, "sum": 120}
    got = _index_latency(buckets, Settings(search_url="http://search:9200", search_refresh_interval="500ms"))
    assert got == {"index_latency_p50_s": 1.0, "index_latency_p99_s": 2.96, "searchable_p99_bound_s": 3.46}
    assert _target(1.0, 1000.0, 1.0, got["searchable_p99_bound_s"])["searchable_p99_met"]
    assert not _target(1.0, 1000.0, 1.0, 5.0)["searchable_p99_met"]  # < 5 s, not <=
    assert not _target(1.0, 1000.0, 1.0, None)["searchable_p99_met"]  # not measured is not met


def test_no_search_store_no_searchable_latency() -> None:
    got = _index_latency({"1.0": 5, "+Inf": 5}, Settings(search_enabled=False))
    assert set(got.values()) == {None}
