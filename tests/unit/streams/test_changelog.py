"""The changelog producer's configuration: a key's records never overtake each other, with or
without idempotence (recovery takes a key's last record as its state)."""

from __future__ import annotations

from config.settings import Settings
from streams.changelog import producer_config


def test_idempotent_producers_keep_order_by_sequence_numbers() -> None:
    config = producer_config(Settings(kafka_bootstrap="127.0.0.1:9092"))
    assert config["enable.idempotence"] is True and config["acks"] == "all"
    assert "max.in.flight.requests.per.connection" not in config  # idempotence keeps order with 5 in flight


def test_without_idempotence_one_request_is_in_flight_per_connection() -> None:
    config = producer_config(Settings(kafka_bootstrap="127.0.0.1:9092", kafka_idempotent_producers=False))
    assert config["enable.idempotence"] is False
    assert config["max.in.flight.requests.per.connection"] == 1  # a retried request cannot be overtaken
