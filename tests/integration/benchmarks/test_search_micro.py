"""`benchmarks.search_micro` on the session's real search store: every variant indexes every
document, finds by label only what it indexes, reports its CPU, and its indices go afterwards."""

from __future__ import annotations

import pytest

from benchmarks.search_micro import markdown, run, server_pid
from sinks.search import make_client

pytestmark = pytest.mark.integration


async def test_variants_index_everything_and_find_by_label_what_they_index(stack_env) -> None:  # noqa: ANN001
    url = stack_env["ALERTSTREAM_SEARCH_URL"]
    result = await run(url, server_pid(url), docs=600, bulk=100, rounds=2)
    variants = result["variants"]
    assert result["label_matches"] > 0
    for name, v in variants.items():
        assert v["documents"] == 600, name
        assert v["server_cpu_ms_per_1000_docs"] > 0, name
    assert variants["as deployed"]["found_by_label"] == result["label_matches"]
    assert variants["labels as key=value keywords"]["found_by_label"] == result["label_matches"]
    assert variants["labels not indexed"]["found_by_label"] == 0
    assert "| labels not indexed |" in markdown(result)
    client = make_client(url)
    try:
        assert not (await client.indices.get(index="search-micro-*", allow_no_indices=True)).body
    finally:
        await client.close()
