"""schemathesis against the gateway's own OpenAPI spec, over real HTTP to a real gateway process.

Generated bodies (any JSON object, per the spec) and the spec's examples (schemas/examples) go to
every path; no answer may be a 5xx or undocumented, auth must not be ignorable, and bodies that
break the schema must be refused.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from streams.topics import ensure_topics
from tests.conftest import isolated
from tests.integration.gateway.gateway_support import GatewayProcess, create_key, gateway_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fuzzed_gateway(pipeline_settings, tmp_path_factory):  # noqa: ANN001, ANN201
    roomy = {"rate_per_s": 10_000, "burst": 10_000}  # the fuzzer's rate must not turn every answer into a 429
    settings = gateway_settings(isolated(pipeline_settings, "gwfuzz"), gateway_lag_threshold=0,
                                gateway_tenant_rate_limit=roomy, gateway_provider_rate_limit=roomy)
    ensure_topics(settings)
    process = GatewayProcess(settings, tmp_path_factory.mktemp("gwfuzz") / "gateway.log")
    process.key = create_key(settings.require_database_url(), "gw-fuzz")[1]
    yield process
    process.stop()


def _spec() -> dict:
    # the spec the factory builds (no servers needed for that); the test checks the gateway serves the same
    from config.settings import Settings
    from gateway.app import create_app

    return create_app(Settings(kafka_bootstrap="unused:9092"), producer=None, keystore=None).openapi()  # type: ignore[arg-type]


SPEC = _spec()
schema = schemathesis.openapi.from_dict(SPEC)


def test_the_served_spec_is_the_one_fuzzed(fuzzed_gateway) -> None:  # noqa: ANN001
    import httpx

    assert httpx.get(f"{fuzzed_gateway.url}/openapi.json").json() == SPEC


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_gateway_conforms_to_its_openapi_spec(case, fuzzed_gateway) -> None:  # noqa: ANN001
    # positive_data_acceptance is left out on purpose: the spec declares each body loosely (a JSON object, with the
    # real payloads as examples) because what makes a provider payload valid is the pipeline's normalizer, which the
    # gateway runs and answers with 400 + its reason. Every other check stays: no 5xx, only documented statuses and
    # content types, auth not ignorable, schema-invalid bodies refused.
    case.call_and_validate(base_url=fuzzed_gateway.url, headers={"X-API-KEY": fuzzed_gateway.key},
                           excluded_checks=[schemathesis.checks.positive_data_acceptance])
