"""Dedup decisions (`decide`) and state keys (tables/dedup_state.py); the batch plan built on them:
tests/unit/pipeline/test_deduplicator.py."""

from __future__ import annotations

from tables.dedup_state import DedupState, Outcome, decide, state_key

# ---------------------------------------------------------------- decide


def test_decide_new() -> None:
    outcome, state = decide(None, "h1", "firing", 1000)
    assert outcome is Outcome.NEW
    assert state == DedupState("h1", "firing", 1000, 1000, 1000)


def test_decide_duplicate_writes_nothing() -> None:
    previous = DedupState("h1", "firing", 1000, 1000, 1000)
    assert decide(previous, "h1", "firing", 5000) == (Outcome.DUPLICATE, None)


def test_decide_changed_keeps_first_seen() -> None:
    previous = DedupState("h1", "firing", 1000, 2000, 2000)
    outcome, state = decide(previous, "h2", "firing", 5000)
    assert outcome is Outcome.CHANGED
    assert state == DedupState("h2", "firing", 1000, 5000, 5000)


def test_decide_status_change_firing_to_resolved() -> None:
    previous = DedupState("h-firing", "firing", 1000, 1000, 1000)
    outcome, state = decide(previous, "h-resolved", "resolved", 9000)
    assert outcome is Outcome.CHANGED
    assert state is not None
    assert (state.status, state.first_seen_ms, state.changed_ms) == ("resolved", 1000, 9000)


def test_state_key_keeps_tenants_apart() -> None:
    assert state_key("a", "fp") != state_key("b", "fp")
    assert state_key("a", "fp") == b"a\x00fp"
    assert isinstance(state_key("a", "fp"), bytes)


def test_duplicate_refreshes_seen_only_after_half_the_ttl() -> None:
    previous = DedupState("h1", "firing", 1000, 1000, 1000)
    assert decide(previous, "h1", "firing", 1400, refresh_after_ms=500) == (Outcome.DUPLICATE, None)
    outcome, state = decide(previous, "h1", "firing", 1500, refresh_after_ms=500)
    assert outcome is Outcome.DUPLICATE
    assert state == DedupState("h1", "firing", 1000, 1000, 1500)  # content and change time kept
