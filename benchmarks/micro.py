"""What the component micro-benchmarks share: their variants as a Markdown table, and a result
printed and, when asked, saved as JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Column = tuple[str, Callable[[dict[str, Any]], object]]  # title, the cell from a variant's figures


def variants_table(title: str, columns: list[Column], variants: dict[str, dict[str, Any]]) -> str:
    lines = [title, "", "| variant | " + " | ".join(name for name, _ in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(str(cell(v)) for _, cell in columns) + " |" for name, v in variants.items()]
    return "\n".join(lines)


def publish(result: dict[str, Any], text: str, json_path: str | None) -> None:
    print(text)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
