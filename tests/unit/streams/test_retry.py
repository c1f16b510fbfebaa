from config.settings import Settings
from core.retry_headers import ATTEMPT, FIRST_FAILURE, TARGET
from streams.retry import due_in_s, retry_headers, route_for, tier_topics

SETTINGS = Settings(retry_delays_s=[10, 60, 600])


def test_tiers_follow_the_configured_delays() -> None:
    assert tier_topics(SETTINGS) == ["alerts.retry.1", "alerts.retry.2", "alerts.retry.3"]


def test_each_failure_moves_a_record_one_tier_up_then_to_the_dlq() -> None:
    headers: dict[str, bytes] = {"tenant": b"t"}
    seen = []
    for _ in range(4):
        headers = retry_headers(headers, source="alerts.stored", partition=2, offset=7, error=TimeoutError("slow"),
                                target="alerts.stored", now_ms=1000 + len(seen))
        route = route_for(headers, SETTINGS)
        seen.append((route.topic, route.dead))
    assert seen == [("alerts.retry.1", False), ("alerts.retry.2", False), ("alerts.retry.3", False), ("alerts.dlq", True)]
    assert headers[ATTEMPT] == b"4"
    assert headers[FIRST_FAILURE] == b"1000"  # the first failure, not the last
    assert headers[TARGET] == b"alerts.stored" and headers["tenant"] == b"t"
    assert headers["dlq_error_class"] == b"TimeoutError" and headers["dlq_detail"] == b"slow"
    assert (headers["dlq_topic"], headers["dlq_partition"], headers["dlq_offset"]) == (b"alerts.stored", b"2", b"7")


def test_due_time_counts_from_the_parked_record() -> None:
    assert due_in_s(10_000, 10, now_ms=15_000) == 5
    assert due_in_s(10_000, 10, now_ms=25_000) == 0
