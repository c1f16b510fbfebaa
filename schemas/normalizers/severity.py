"""Provider severity words mapped onto Keep's five severities."""

from __future__ import annotations

_WORDS = {
    "critical": "critical", "crit": "critical", "fatal": "critical", "disaster": "critical", "emergency": "critical",
    "p1": "critical", "sev1": "critical",
    "high": "high", "error": "high", "err": "high", "major": "high", "p2": "high", "sev2": "high",
    "warning": "warning", "warn": "warning", "average": "warning", "medium": "warning", "p3": "warning", "sev3": "warning",
    "info": "info", "information": "info", "informational": "info", "notice": "info", "p4": "info", "sev4": "info",
    "low": "low", "minor": "low", "debug": "low", "not classified": "low", "not_classified": "low", "none": "low", "ok": "low", "p5": "low",
}


def severity_from_word(word: object, default: str = "info") -> str:
    if word is None:
        return default
    return _WORDS.get(str(word).strip().lower(), default)


def is_known_severity_word(word: object) -> bool:
    return isinstance(word, str) and word.strip().lower() in _WORDS
