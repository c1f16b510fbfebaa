from config.settings import Settings
from core.errors import ATTEMPTS as ATTEMPT, FIRST_FAILURE, RETRY_TARGET as TARGET, Role
from streams.retry import due_in_s, error_router, tier_topics

SETTINGS = Settings(retry_delays_s=[10, 60, 600])


def test_tiers_follow_the_configured_delays() -> None:
    assert tier_topics(SETTINGS) == ["alerts.retry.1", "alerts.retry.2", "alerts.retry.3"]


def test_each_failure_moves_a_record_one_tier_up_then_to_the_dlq() -> None:
    headers: dict[str, bytes] = {"tenant": b"t"}
    seen = []
    router = error_router(SETTINGS)
    for _ in range(4):
        routed = router.retry(value=b"v", headers=headers, source="alerts.stored", partition=2, offset=7,
                              error=TimeoutError("slow"), target="alerts.stored", now_ms=1000 + len(seen))
        headers = routed.headers
        seen.append((routed.topic, routed.role is Role.DEAD_LETTER))
    assert seen == [("alerts.retry.1", False), ("alerts.retry.2", False), ("alerts.retry.3", False), ("alerts.dlq", True)]
    assert headers[ATTEMPT] == b"4"
    assert headers[FIRST_FAILURE] == b"1000"  # the first failure, not the last
    assert headers[TARGET] == b"alerts.stored" and headers["tenant"] == b"t"
    assert headers["dlq_error_class"] == b"TimeoutError" and headers["dlq_detail"] == b"slow"
    assert (headers["dlq_topic"], headers["dlq_partition"], headers["dlq_offset"]) == (b"alerts.stored", b"2", b"7")
    assert headers["dlq_reason"] == b"retries_exhausted" and routed.reason == "retries_exhausted"


def test_due_time_counts_from_the_parked_record() -> None:
    assert due_in_s(10_000, 10, now_ms=15_000) == 5
    assert due_in_s(10_000, 10, now_ms=25_000) == 0


def test_documents_throttled_again_keep_the_count_of_the_record_they_came_back_on() -> None:
    from streams.retry import by_origin

    first = {"dlq_attempts": b"1", "retry_target": b"alerts.stored"}
    second = {"dlq_attempts": b"2", "retry_target": b"alerts.stored"}
    origin = {"a": first, "b": second, "c": first, "d": {"tenant": b"t"}}  # d: a record that never failed
    groups = by_origin(["a", "b", "c", "d", "e"], origin, lambda uid: uid)
    assert groups == [(first, ["a", "c"]), (second, ["b"]), ({}, ["d", "e"])]

    router = error_router(SETTINGS)
    topics = [router.retry(value=b"v", headers=h, source="alerts.stored", partition=-1, offset=-1, error="429",
                           target="alerts.stored", now_ms=0).topic for h, _ in groups]
    assert topics == ["alerts.retry.2", "alerts.retry.3", "alerts.retry.1"]
    third = router.retry(value=b"v", headers={**second, "dlq_attempts": b"3"}, source="s", partition=0, offset=0,
                         error="429", target="alerts.stored", now_ms=0)
    assert third.role is Role.DEAD_LETTER and third.reason == "retries_exhausted"
