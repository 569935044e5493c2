"""Executors: the same retry-once-then-report semantics in this process and on Ray (a task
that raises, a worker process that dies), the registry and its one-line errors, and no
Ray import on the default path."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from secure_assist.cli import main
from secure_assist.executors import EXECUTORS, make_executor
from secure_assist.executors.base import Executor
from secure_assist.executors.local import LocalExecutor


def _work(item: tuple[str, str], shared: str) -> str:
    """ok: returns; once: fails its first attempt; always: fails every time; crash: its
    first attempt kills the process running it. Attempts are counted in marker files so
    they survive the process."""
    name, folder = item
    marker = Path(folder) / name
    first = not marker.exists()
    marker.write_text("tried")
    if name.startswith("always"):
        raise ValueError(f"{name} always fails\nsecond line")
    if first and name.startswith("once"):
        raise RuntimeError("first attempt fails")
    if first and name.startswith("crash"):
        os._exit(1)
    return f"{shared}:{name}"


def _outcomes(executor: Executor, names: list[str], folder: Path) -> dict:
    outcomes = executor.map(_work, [(n, str(folder)) for n in names], "shared", "test", progress=False)
    assert [o.index for o in outcomes] == list(range(len(names)))
    return {name: outcome for name, outcome in zip(names, outcomes)}


def test_local_executor_retries_once_and_reports_what_still_fails(tmp_path: Path) -> None:
    got = _outcomes(LocalExecutor(), ["ok", "once", "always", "ok2"], tmp_path)
    assert got["ok"].value == "shared:ok" and got["ok"].attempts == 1
    assert got["once"].ok and got["once"].value == "shared:once" and got["once"].attempts == 2
    assert not got["always"].ok and got["always"].attempts == 2 and got["always"].value is None
    assert got["always"].error == "ValueError: always always fails"  # one line
    assert got["ok2"].ok  # the others went on


def test_ray_executor_retries_a_dead_worker_and_a_raising_task(ray_cluster: tuple, tmp_path: Path) -> None:
    executor, _ = ray_cluster
    # Pickled by value: Ray's workers cannot import this test module.
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    got = _outcomes(executor, ["ok", "once", "always", "crash"], tmp_path)
    assert got["ok"].value == "shared:ok" and got["once"].value == "shared:once" and got["once"].attempts == 2
    assert got["crash"].ok and got["crash"].value == "shared:crash" and got["crash"].attempts == 2
    assert not got["always"].ok and got["always"].error == "ValueError: always always fails"


def test_registry_and_one_line_errors(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(EXECUTORS) == {"local", "ray"} and isinstance(make_executor("local"), LocalExecutor)
    tiny = ["compare", "--model", "tiny-llama", "--train-samples", "8", "--quiet"]
    assert main([*tiny, "--ray-address", "127.0.0.1:1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --ray-address and --ray-cpus need --executor ray"
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the [ray] extra were not installed
    for command in (tiny, ["audit", "--model", "tiny-llama", "--quiet"]):
        assert main([*command, "--executor", "ray"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ['error: --executor ray needs Ray, an optional extra: pip install -e ".[ray]" '
                       '(or pip install "secure-assist[ray]")']


def test_default_executor_does_not_import_ray() -> None:
    code = ("import sys; from secure_assist.executors import make_executor; make_executor('local'); "
            "assert 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    # Only the Ray executor's module imports Ray (and it is imported only when chosen).
    root = Path(__file__).resolve().parents[1]
    importers = set()
    for path in [*root.glob("secure_assist/**/*.py"), *root.glob("protocol/**/*.py"), *root.glob("attacks/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "ray" or n.startswith("ray.") for n in names):
                importers.add(path.relative_to(root).as_posix())
    assert importers == {"secure_assist/executors/ray_cluster.py"}
