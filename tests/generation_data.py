"""A few Alpaca rows for the generation tests, copied at test time from the shared data folder
(the data is CC BY-NC: tests and benchmarks read it, the wheel never holds it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ALPACA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "alpaca" / "alpaca_5000.jsonl"


def alpaca_rows(n: int) -> list[dict[str, str]]:
    """The first n rows with a non-blank answer (skips the test when the shared data is absent)."""
    if not ALPACA.is_file():
        pytest.skip(f"shared Alpaca data not found at {ALPACA}")
    rows = []
    with ALPACA.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["output"].strip():
                rows.append(row)
            if len(rows) == n:
                break
    return rows


def alpaca_file(folder: Path, n: int) -> Path:
    """A JSONL fixture with the first n usable Alpaca rows."""
    path = folder / "alpaca.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in alpaca_rows(n)), encoding="utf-8")
    return path
