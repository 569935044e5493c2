"""Execute every notebook in this folder in place, top to bottom, on the default model (what is committed).

    OMP_NUM_THREADS=2 python notebooks/execute.py [NOTEBOOK ...]

Outputs go to SECURE_ASSIST_NOTEBOOK_OUTPUT (default runs/notebooks); each notebook runs in a fresh kernel.
The stored outputs name files relative to the repository (warnings print the absolute path of the code that
raised them, which is the executing machine's, not the project's).
"""

from __future__ import annotations

import importlib.util
import sys
import sysconfig
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def machine_prefixes() -> list[tuple[str, str]]:
    """(absolute prefix, what replaces it) for the folders of this machine that outputs may name, longest first.

    Installed packages become `<site-packages>/` (the environment may sit inside the repository, so it is
    replaced before the repository root); the project's own files become paths relative to the repository,
    both this checkout's and the one the kernel imports `secure_assist` from (an editable install may point
    to another checkout)."""
    paths = sysconfig.get_paths()
    prefixes = {paths[key] + "/": "<site-packages>/" for key in ("purelib", "platlib")}
    prefixes[paths["stdlib"] + "/"] = "<stdlib>/"
    prefixes[str(ROOT) + "/"] = ""
    spec = importlib.util.find_spec("secure_assist")  # locates the package without importing it
    if spec is not None and spec.origin is not None:
        prefixes[str(Path(spec.origin).resolve().parents[1]) + "/"] = ""
    return sorted(prefixes.items(), key=lambda item: len(item[0]), reverse=True)


def relative_outputs(notebook: nbformat.NotebookNode, prefixes: list[tuple[str, str]]) -> int:
    """Replace the machine's absolute prefixes in every stored text output and traceback; return how many."""
    replaced = 0

    def scrub(text: str) -> str:
        nonlocal replaced
        for prefix, replacement in prefixes:
            replaced += text.count(prefix)
            text = text.replace(prefix, replacement)
        return text

    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if "text" in output:
                output["text"] = scrub(output["text"])
            if "traceback" in output:
                output["traceback"] = [scrub(line) for line in output["traceback"]]
            data = output.get("data", {})
            for kind in ("text/plain", "text/html", "text/markdown"):
                if kind in data:
                    data[kind] = scrub(data[kind])
    return replaced


def main() -> None:
    """Run the named notebooks (default: all of them) and save them with their outputs."""
    paths = [Path(p) for p in sys.argv[1:]] or sorted(HERE.glob("*.ipynb"))
    prefixes = machine_prefixes()
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        NotebookClient(notebook, timeout=7200, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT)}}).execute()
        relative_outputs(notebook, prefixes)
        nbformat.write(notebook, path)
        print(f"executed {path}")


if __name__ == "__main__":
    main()
