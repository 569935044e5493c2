"""Write a sweep's outputs: compare.json (every point), compare.md, compare.csv and the plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from protocol.files import write_atomic
from secure_assist.compare.plots import write_plots
from secure_assist.compare.table import to_csv, to_markdown

OUTPUT_FILES = ("compare.json", "compare.md", "compare.csv")


def write_outputs(compare: dict[str, Any], output: Path | str) -> list[Path]:
    """Every output file of the sweep, written atomically; their paths."""
    output = Path(output)
    paths = [output / name for name in OUTPUT_FILES]
    for path, text in zip(paths, (json.dumps(compare, indent=1), to_markdown(compare), to_csv(compare))):
        write_atomic(path, text.encode())
    return paths + write_plots(compare, output)
