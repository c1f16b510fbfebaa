"""deploy/k8s checked against the code and against itself: variables exist in the settings, secrets
stay out of the ConfigMap, commands exist, ports and probes match what the processes serve, KEDA
never scales workers beyond the partitions, every selector and reference points at something."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.unit.deploy.deploy_checks import (
    DEPLOY,
    SECRET_ENV,
    command_error,
    consumer_groups,
    load_yaml_docs,
    served_paths,
    settings_from,
    unknown_env,
)

K8S = DEPLOY / "k8s"
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
DOCS = [(path.name, doc) for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
        for doc in load_yaml_docs(path)]
OBJECTS = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in DOCS}
WORKLOADS = {name: doc for (kind, name), doc in OBJECTS.items() if kind in {"Deployment", "StatefulSet"}}
CONFIG = next(doc for (kind, _), doc in OBJECTS.items() if kind == "ConfigMap")["data"]
SECRET = next(doc for (kind, _), doc in OBJECTS.items() if kind == "Secret")["stringData"]
SETTINGS = settings_from({**CONFIG, **SECRET})
WORKER = WORKLOADS["alertstream-worker"]
GATEWAY = WORKLOADS["alertstream-gateway"]


def _containers(workload: dict, init: bool = True) -> list[dict]:
    spec = workload["spec"]["template"]["spec"]
    return spec["containers"] + (spec.get("initContainers", []) if init else [])


def _env_names(container: dict) -> set[str]:
    names = {e["name"] for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(OBJECTS[("ConfigMap", source["configMapRef"]["name"])]["data"])
        if "secretRef" in source:
            names |= set(OBJECTS[("Secret", source["secretRef"]["name"])]["stringData"])
    return names


def _main(workload: dict) -> dict:
    (container,) = _containers(workload, init=False)
    return container


def _port(container: dict, ref: str | int) -> int:
    if isinstance(ref, int):
        return ref
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == ref]
    return port


def test_kustomization_applies_every_manifest() -> None:
    assert sorted(KUSTOMIZATION["resources"]) == sorted({name for name, _ in DOCS})
    images = {c["image"] for w in WORKLOADS.values() for c in _containers(w)}
    assert images == {i["name"] for i in KUSTOMIZATION["images"]}


def test_every_variable_exists_in_the_settings_and_every_value_is_valid() -> None:
    assert not unknown_env(set(CONFIG) | set(SECRET)), unknown_env(set(CONFIG) | set(SECRET))
    for workload in WORKLOADS.values():
        for container in _containers(workload):
            assert not unknown_env(_env_names(container)), (container["name"], unknown_env(_env_names(container)))
    assert SETTINGS.worker_processes == 1, "one process per pod: scale with replicas"
    assert SETTINGS.worker_web_bind == SETTINGS.gateway_bind == "0.0.0.0"


def test_secrets_are_in_the_secret_never_in_the_configmap() -> None:
    assert not SECRET_ENV & set(CONFIG), f"secrets in the ConfigMap: {sorted(SECRET_ENV & set(CONFIG))}"
    assert set(SECRET) <= SECRET_ENV, "only secrets in the Secret: the rest belongs in the ConfigMap, where it is visible"


def test_every_command_exists() -> None:
    for workload in WORKLOADS.values():
        for container in _containers(workload):
            args = container.get("command", []) + container.get("args", [])
            assert command_error(args) is None, f"{container['name']}: `alertstream {' '.join(args)}`: {command_error(args)}"
    assert _main(WORKER)["args"] == ["worker"] and _main(GATEWAY)["args"] == ["gateway"]
    for workload in (WORKER, GATEWAY):  # the schema before the process that needs it, whichever starts first
        assert [c["args"] for c in workload["spec"]["template"]["spec"]["initContainers"]] == [["migrate"]]


def test_container_ports_are_the_ones_the_processes_listen_on() -> None:
    assert _port(_main(WORKER), "http") == SETTINGS.worker_web_port
    assert _port(_main(GATEWAY), "http") == SETTINGS.gateway_port


@pytest.mark.parametrize("name,package", [("alertstream-worker", "streams"), ("alertstream-gateway", "gateway")])
def test_probes_ask_paths_the_process_serves_on_its_port(name: str, package: str) -> None:
    container = _main(WORKLOADS[name])
    probes = {k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in container}
    assert probes["livenessProbe"]["path"] == "/healthz"
    # the worker's readiness is /readyz; the gateway's is /healthz on purpose (the manifest says why)
    assert probes["readinessProbe"]["path"] == {"streams": "/readyz", "gateway": "/healthz"}[package]
    served = served_paths(package)
    for kind, probe in probes.items():
        assert probe["path"] in served, f"{name} {kind} asks {probe['path']}; {package}/ serves {sorted(served)}"
        assert _port(container, probe["port"]) == _port(container, "http")
    annotations = WORKLOADS[name]["spec"]["template"]["metadata"]["annotations"]
    # the gateway serves /metrics (tenant names) on a listener of its own, the worker on its web port
    metrics_port = {"streams": "http", "gateway": "metrics"}[package]
    assert int(annotations["prometheus.io/port"]) == _port(container, metrics_port)
    if package == "streams":
        assert "/metrics" in served


def test_services_select_pods_and_target_their_ports() -> None:
    for (kind, name), service in OBJECTS.items():
        if kind != "Service":
            continue
        pods = [w for w in WORKLOADS.values()
                if service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, f"Service {name} selects {len(pods)} workloads"
        for port in service["spec"]["ports"]:
            _port(_main(pods[0]), port["targetPort"])  # a named port the container declares


def test_every_selector_matches_its_pod_labels() -> None:
    for name, workload in WORKLOADS.items():
        assert workload["spec"]["selector"]["matchLabels"].items() <= workload["spec"]["template"]["metadata"]["labels"].items(), name
    for (kind, name), pdb in OBJECTS.items():
        if kind == "PodDisruptionBudget":
            assert pdb["spec"]["selector"]["matchLabels"] == WORKLOADS[name]["spec"]["selector"]["matchLabels"], name


def test_worker_statefulset_keeps_rocksdb_on_a_persistent_volume() -> None:
    assert WORKER["kind"] == "StatefulSet"
    headless = OBJECTS[("Service", WORKER["spec"]["serviceName"])]
    assert headless["spec"]["clusterIP"] == "None"
    (claim,) = WORKER["spec"]["volumeClaimTemplates"]
    mounts = {m["mountPath"]: m["name"] for m in _main(WORKER)["volumeMounts"]}
    assert mounts[str(SETTINGS.data_dir)] == claim["metadata"]["name"], "the data dir (RocksDB) is on the claim"
    grace = WORKER["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > SETTINGS.worker_stop_timeout_s, "the pod must outlive the worker's own orderly stop"


def test_keda_scales_workers_on_lag_and_never_beyond_the_partitions() -> None:
    (scaled,) = [doc for (kind, _), doc in OBJECTS.items() if kind == "ScaledObject"]
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (WORKER["kind"], WORKER["metadata"]["name"])
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= SETTINGS.topic_partitions
    for workload in (WORKER, GATEWAY):  # the autoscalers own the replica count; apply must not reset it
        assert "replicas" not in workload["spec"], workload["metadata"]["name"]
    groups = consumer_groups(SETTINGS)
    triggers = scaled["spec"]["triggers"]
    assert triggers and all(t["type"] == "kafka" for t in triggers)
    for trigger in triggers:
        meta = trigger["metadata"]
        assert meta["bootstrapServers"] == SETTINGS.kafka_bootstrap
        assert meta["consumerGroup"] in groups, f"no consumer group {meta['consumerGroup']} in streams/app.py: {groups}"
        assert groups[meta["consumerGroup"]] == meta["topic"], f"group {meta['consumerGroup']} does not read {meta['topic']}"
        assert meta["allowIdleConsumers"] == "false" and int(meta["lagThreshold"]) > 0
    assert SETTINGS.topic_alerts in {t["metadata"]["topic"] for t in triggers}, "the input backlog must drive scaling"


def test_gateway_hpa_and_disruption_budgets() -> None:
    (hpa,) = [doc for (kind, _), doc in OBJECTS.items() if kind == "HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", GATEWAY["metadata"]["name"])
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdbs = {name for (kind, name) in OBJECTS if kind == "PodDisruptionBudget"}
    assert pdbs == set(WORKLOADS)
    assert OBJECTS[("PodDisruptionBudget", "alertstream-worker")]["spec"]["maxUnavailable"] == 1


def test_pods_run_as_the_images_non_root_user_with_limits() -> None:
    dockerfile_uid = int(re.findall(r"^USER (\d+)", (Path(DEPLOY).parent / "Dockerfile").read_text(), re.M)[-1])
    for name, workload in WORKLOADS.items():
        pod = workload["spec"]["template"]["spec"]["securityContext"]
        assert pod["runAsNonRoot"] and pod["runAsUser"] == dockerfile_uid, name
        for container in _containers(workload):
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, container["name"]
            resources = container["resources"]
            assert "memory" in resources["limits"] and {"cpu", "memory"} <= set(resources["requests"]), container["name"]


def test_the_checks_catch_mistakes() -> None:
    """The helpers above are what the tests rely on: a typo must not pass them."""
    assert unknown_env({"ALERTSTREAM_TOPIC_PARTITION", "ALERTSTREAM_TOPIC_PARTITIONS"}) == ["ALERTSTREAM_TOPIC_PARTITION"]
    assert command_error(["wroker"]) is not None and command_error(["worker"]) is None
    with pytest.raises(ValueError):
        settings_from({"ALERTSTREAM_TOPIC_PARTITIONS": "twelve"})


# The oldest Kubernetes the manifests are written for (PDB unhealthyPodEvictionPolicy and the
# StatefulSet PVC retention policy are on by default from 1.27, GA by 1.32) and a current one.
KUBERNETES_VERSIONS = ["1.29", "1.32"]
CUSTOM_KINDS = {"ScaledObject"}  # KEDA's CRD: no schema offline; checked field by field below


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_are_valid_kubernetes_objects(version: str) -> None:
    """Strict validation against the API's OpenAPI schemas (kubernetes-validate ships them): an
    unknown or misplaced field fails here instead of at `kubectl apply`."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for name, doc in DOCS:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} ({doc['kind']}) is not valid for Kubernetes {version}: {exc.message} at {list(exc.path)}")


# The ScaledObject fields of KEDA 2.x's CRD that these manifests may use (keda.sh docs, "Scaling
# Deployments, StatefulSets & Custom Resources"); the kafka trigger's metadata keys likewise.
KEDA_SPEC = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
             "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers"}
KEDA_ADVANCED = {"restoreToOriginalReplicaCount", "horizontalPodAutoscalerConfig", "scalingModifiers"}
KEDA_KAFKA = {"bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
              "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset", "excludePersistentLag",
              "limitToPartitionsWithLag", "partitionLimitation", "version", "sasl", "tls"}


def test_scaled_object_uses_only_fields_keda_knows() -> None:
    (scaled,) = [doc for (kind, _), doc in OBJECTS.items() if kind == "ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= KEDA_SPEC, set(spec) - KEDA_SPEC
    assert set(spec.get("advanced", {})) <= KEDA_ADVANCED
    assert set(spec["advanced"]["horizontalPodAutoscalerConfig"]) <= {"name", "behavior"}
    for trigger in spec["triggers"]:
        assert set(trigger["metadata"]) <= KEDA_KAFKA, set(trigger["metadata"]) - KEDA_KAFKA
        # KEDA reads metadata values as strings: a bare YAML number or boolean is refused
        assert all(isinstance(v, str) for v in trigger["metadata"].values()), trigger["metadata"]
