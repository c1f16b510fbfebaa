"""Consumer-side throttling in stage one: over-rate records of a provider are set aside, not lost."""

from __future__ import annotations

from pathlib import Path

from config.settings import RateLimit
from core.errors import ATTEMPTS as ATTEMPT, RETRY_TARGET as TARGET, THROTTLED, ErrorRouter
from core.records import RawRecord
from pipeline.normalizer import process_records
from pipeline.throttle import ConsumerThrottle

EXAMPLES = Path(__file__).resolve().parents[3] / "schemas" / "examples"


def record(offset: int, provider: str, example: str, tenant: str = "acme") -> RawRecord:
    return RawRecord("alerts", 0, offset, 1_700_000_000_000, None, (EXAMPLES / example).read_bytes(),
                     {"provider": provider.encode(), "tenant": tenant.encode()})


def run(records: list[RawRecord], throttle: ConsumerThrottle, clock: float):  # noqa: ANN201
    return process_records(records, partitions=4, default_tenant="default", max_payload_bytes=1 << 20,
                           throttle=throttle, clock_s=clock)


def test_over_rate_records_are_set_aside_and_other_providers_pass() -> None:
    throttle = ConsumerThrottle({"zabbix": RateLimit(rate_per_s=1, burst=3)})
    zabbix = [record(i, "zabbix", "zabbix_webhook.json") for i in range(10)]
    prometheus = [record(100 + i, "prometheus", "prometheus_alertmanager_webhook.json") for i in range(5)]
    result = run(zabbix + prometheus, throttle, clock=0.0)
    assert [r.offset for r in result.throttled] == list(range(3, 10))
    assert result.alerts == 3 + 5 * 2  # 3 zabbix alerts, 2 alerts per Alertmanager webhook
    assert not result.dead_letters
    later = run(result.throttled, throttle, clock=2.0)  # 2 s refill 2 tokens
    assert len(later.throttled) == 5


def test_tenants_have_their_own_buckets() -> None:
    throttle = ConsumerThrottle({"zabbix": RateLimit(rate_per_s=1, burst=1)})
    result = run([record(0, "zabbix", "zabbix_webhook.json", "a"), record(1, "zabbix", "zabbix_webhook.json", "b"),
                  record(2, "zabbix", "zabbix_webhook.json", "a")], throttle, clock=0.0)
    assert [r.offset for r in result.throttled] == [2]


def test_a_record_bigger_than_the_burst_passes_once_the_bucket_is_full() -> None:
    throttle = ConsumerThrottle({"prometheus": RateLimit(rate_per_s=1, burst=1)})
    assert throttle.admit("t", "prometheus", 50, 0.0)  # full bucket: passes, costs the whole burst
    assert not throttle.admit("t", "prometheus", 50, 0.5)
    assert throttle.admit("t", "prometheus", 50, 1.0)


def test_off_without_limits_and_invalid_records_still_go_to_the_dlq() -> None:
    assert not ConsumerThrottle({})
    throttle = ConsumerThrottle({"keep": RateLimit(rate_per_s=1, burst=1)})
    bad = RawRecord("alerts", 0, 7, 1_700_000_000_000, None, b"{nope", {})
    result = run([bad], throttle, clock=0.0)
    assert [d.reason for d in result.dead_letters] == ["malformed_json"] and not result.throttled


def test_parked_headers_come_back_to_the_source_and_never_count_as_attempts() -> None:
    router = ErrorRouter("alerts.dlq", ("alerts.retry.1", "alerts.retry.2"))

    def parked_headers(headers: dict[str, bytes], source_topic: str) -> dict[str, bytes]:
        parked = router.park(key=None, value=b"v", headers=headers, target=source_topic)
        assert parked.topic == "alerts.retry.1"
        return parked.headers

    headers = parked_headers({"provider": b"zabbix", ATTEMPT: b"1"}, "alerts")
    assert headers[TARGET] == b"alerts" and headers[THROTTLED] == b"1" and headers[ATTEMPT] == b"1"
    assert parked_headers(headers, "alerts")[THROTTLED] == b"2"
