"""Structure counts of the code base (prints JSON); the layout's acceptance numbers.

- `secure_assist_top_modules`: modules directly in `secure_assist/` (sub-packages aside);
- `import_cycles`: strongly connected groups of project modules, every import counted
  (also those inside functions, which only hide a cycle);
- `hand_training_benchmarks`: benchmarks that build a server endpoint, a channel or a
  mode host themselves instead of going through `run_training` or a reference;
- `call_depth_cli_to_server_handler`: frames between `cli.main` and the side-tuning
  server's `handle`, measured on a real `finetune` run (a tiny model: the depth does not
  depend on the model), and `config_repacks`: the functions on the way that build a new
  run config from the old one or unpack it into a dict (a `FinetuneConfig` made,
  `dataclasses.replace`d or `asdict`ed).

    python benchmarks/structure_counts.py
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import io
import json
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path and its siblings' names would shadow packages.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
PACKAGES = ("protocol", "attacks", "secure_assist")
# What a benchmark that trains by hand constructs.
HAND_TRAINING = ("SideTuningServer(", "GenerationServer(", "HeHeadServer(", "ModeHost(", "InProcessChannel(")


def module_name(path: Path) -> str:
    """Dotted module name of a source file under the repository root."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports() -> dict[str, set[str]]:
    """Each project module and the project modules it imports (anywhere in its body)."""
    modules = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from package import module` imports the module; `from module import name` the module.
                found = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            targets.update(t for t in found if t in modules and t != name)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def hand_training_benchmarks() -> list[str]:
    """Benchmarks that construct a server endpoint, channel or host themselves."""
    return sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")
                  if p.name != Path(__file__).name and any(s in p.read_text(encoding="utf-8") for s in HAND_TRAINING))


def run_path_trace() -> dict[str, Any]:
    """Call depth from `cli.main` to the side-tuning server's handler, and the config re-packs on the way."""
    from secure_assist import cli, config

    deepest: list[str] = []
    repacks: set[str] = set()

    def frames(frame: FrameType | None) -> list[str]:
        names = []
        while frame is not None:
            names.append(f"{frame.f_globals.get('__name__')}.{frame.f_code.co_qualname}")
            frame = frame.f_back
        return names[::-1]

    def profile(frame: FrameType, event: str, _: Any) -> None:
        if event != "call":
            return
        code = frame.f_code
        if code.co_qualname == "SideTuningServer.handle" and not deepest:
            deepest.extend(frames(frame))
        elif (code.co_name == "__init__" and isinstance(frame.f_locals.get("self"), config.FinetuneConfig)
              or code in (dataclasses.replace.__code__, dataclasses.asdict.__code__)
              and isinstance(frame.f_locals.get("obj"), config.FinetuneConfig)):
            caller = frame.f_back
            repacks.add(f"{caller.f_globals.get('__name__')}.{caller.f_code.co_qualname}")

    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):
        sys.setprofile(profile)
        try:
            cli.main(["finetune", "--model", "tiny-llama", "--train-samples", "24", "--eval-samples", "8",
                      "--epochs", "1", "--workdir", workdir, "--quiet"])
        finally:
            sys.setprofile(None)
    start = next(i for i, name in enumerate(deepest) if name == "secure_assist.cli.main")
    path = deepest[start:]
    return {"call_depth_cli_to_server_handler": len(path) - 1, "call_path": path,
            "config_repacks": len(repacks), "config_repack_functions": sorted(repacks)}


def main() -> None:
    """Print the counts as JSON."""
    graph = project_imports()
    top = sorted(p.name for p in (ROOT / "secure_assist").glob("*.py") if p.name != "__init__.py")
    print(json.dumps({"secure_assist_top_modules": len(top), "secure_assist_top_module_names": top,
                      "import_cycles": cycles(graph), "hand_training_benchmarks": hand_training_benchmarks(),
                      **run_path_trace()}, indent=1))


if __name__ == "__main__":
    main()
