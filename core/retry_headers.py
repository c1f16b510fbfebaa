"""Headers every retried record carries (the DLQ uses the same names): low enough for the
normalizer's throttle, the retry tiers (streams/retry.py) and the gateway to share them."""

ATTEMPT = "dlq_attempts"
FIRST_FAILURE = "dlq_first_failure_ms"
TARGET = "retry_target"  # the topic a parked or retried record goes back to
