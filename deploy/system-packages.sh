#!/usr/bin/env bash
# Debian packages the test suite drives as real peers: Prometheus (scrapes a pipeline;
# `promtool test rules`), Alertmanager (sends webhooks to the gateway), Chromium (status page
# in a headless browser) and wrk (gateway load benchmark). Installed only when missing.
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null || need+=(prometheus-alertmanager)
command -v chromium >/dev/null || need+=(chromium)
command -v wrk >/dev/null || need+=(wrk)
# the local stack's real engines (Apache Kafka, OpenSearch) run on Java 17+, their jars come through Maven
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
