"""The internal topics carry packed alerts (`PackedAlert`: head fields plus the alert's JSON, left as
bytes): whatever the dedup stage and the indexer read, write or send on must be exactly what the
fully decoded `NormalizedAlert` gives."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.normalizer import pack, unpack
from schemas.alert import Alert, NormalizedAlert, PackedAlert

text = st.text(max_size=40)
# finite floats: alerts come from JSON, which has no NaN or infinity
json_leaf = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | text
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                          max_leaves=12)

alerts = st.builds(
    Alert,
    name=text, status=st.sampled_from(["firing", "resolved", "acknowledged"]), severity=text,
    last_received=text, fingerprint=text, tenant=text, provider_type=text, provider_id=st.none() | text,
    id=st.none() | text, service=st.none() | text, source=st.lists(text, max_size=3),
    message=st.none() | text, labels=st.dictionaries(text, text, max_size=5),
    extra=st.dictionaries(text, json_value, max_size=5),
)
normalized = st.builds(
    NormalizedAlert, uid=text, received_at_ms=st.integers(0, 2**48), content_hash=text, alert=alerts,
    source_topic=text, source_partition=st.integers(-1, 1000), source_position=st.integers(-1, 2**62),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(normalized, min_size=1, max_size=5))
def test_a_packed_alert_reads_as_the_full_alert(items: list[NormalizedAlert]) -> None:
    (blob,) = pack(items, max_bytes=1 << 30)
    packed = unpack(blob)
    for full, lazy in zip(items, packed, strict=True):
        a, head = full.alert, lazy.alert
        assert {f: getattr(head, f) for f in head.__struct_fields__} == {f: getattr(a, f) for f in head.__struct_fields__}
        assert (lazy.uid, lazy.received_at_ms, lazy.content_hash, lazy.source_topic, lazy.source_partition,
                lazy.source_position) == (full.uid, full.received_at_ms, full.content_hash, full.source_topic,
                                          full.source_partition, full.source_position)
        assert lazy.normalized() == full
        # the stored row's JSON: the same document, key for key
        assert msgspec.json.decode(lazy.alert_json()) == msgspec.json.decode(full.alert_json())
    # sent on to the indexer as read: the same bytes as packing the decoded alerts
    assert pack(packed, max_bytes=1 << 30) == [blob]
    assert [p.normalized() for p in unpack(blob)] == items


def test_a_packed_alert_keeps_its_json_as_bytes() -> None:
    full = NormalizedAlert("u1", 1, "h", Alert(name="disk", last_received="t", extra={"big": "x" * 1000}))
    (packed,) = unpack(pack([full], 1 << 20)[0])
    assert isinstance(packed, PackedAlert) and not hasattr(packed.alert, "extra")
    assert isinstance(packed.body, bytes) and packed.body == full.alert_json_bytes()


def test_what_the_dedup_stage_reads_of_a_stored_alert_is_in_its_head() -> None:
    """Every reader of the dedup stage's batch runs on packed alerts: the Postgres rows, the
    end-to-end latency metric, the refused-row bookkeeping, the search document."""
    from config.metrics import observe_end_to_end
    from core.records import Sighting, WriteBatch
    from sinks.postgres import alert_rows, last_alert_rows
    from sinks.search import alert_document

    full = NormalizedAlert("00000000-0000-0000-0000-000000000001", 1_700_000_000_000, "h",
                           Alert(name="disk", last_received="2026-12-03T00:00:00Z", fingerprint="f", tenant="t"))
    (packed,) = unpack(pack([full], 1 << 20)[0])
    batch = WriteBatch([packed], [Sighting("t", "f", 1_700_000_000_000, 0, 1, packed, "alerts:0")])
    observe_end_to_end(batch, now_s=1_700_000_001)
    assert alert_rows([packed]) == alert_rows([full])
    assert last_alert_rows(batch.sightings) == last_alert_rows(
        [Sighting("t", "f", 1_700_000_000_000, 0, 1, full, "alerts:0")])
    assert msgspec.json.decode(alert_document(packed)) == msgspec.json.decode(alert_document(full))
