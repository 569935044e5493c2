"""Execute every notebook in this folder in place, top to bottom, on the default model (what is committed).

    OMP_NUM_THREADS=2 python notebooks/execute.py [NOTEBOOK ...]

Outputs go to SECURE_ASSIST_NOTEBOOK_OUTPUT (default runs/notebooks); each notebook runs in a fresh kernel.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def main() -> None:
    """Run the named notebooks (default: all of them) and save them with their outputs."""
    paths = [Path(p) for p in sys.argv[1:]] or sorted(HERE.glob("*.ipynb"))
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        NotebookClient(notebook, timeout=7200, kernel_name="python3",
                       resources={"metadata": {"path": str(HERE.parent)}}).execute()
        nbformat.write(notebook, path)
        print(f"executed {path}")


if __name__ == "__main__":
    main()
