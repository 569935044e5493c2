"""The CLI starts without the heavy libraries: its parser, flags and help come from light
modules, and torch and transformers load only when a command's handler needs them."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from secure_assist.cli import main

REPOSITORY = Path(__file__).resolve().parents[1]


def test_building_the_parser_imports_neither_torch_nor_transformers() -> None:
    code = ("import secure_assist.cli, sys; secure_assist.cli.build_parser(); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    # This checkout first on the path, so the test checks these sources and not another install's.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPOSITORY,
                            timeout=120, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_attack_help_still_lists_every_attack(capsys) -> None:
    from attacks.registry import all_attacks

    with pytest.raises(SystemExit) as stop:
        main(["attack", "--help"])
    assert stop.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also after hyphens
    for name, cls in all_attacks().items():
        assert "".join(f"{name}: {cls.DESCRIPTION}".split()) in text


def test_unknown_attack_is_refused_while_parsing(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["attack", "no_such_attack", "--workdir", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "argument NAME: invalid choice: 'no_such_attack' (choose from " in err and "delta_argmax" in err


def test_light_mechanism_list_matches_the_mechanism_classes() -> None:
    from secure_assist.mechanism_parameters import MECHANISM_PARAMETERS, uses_epsilon
    from secure_assist.mechanisms import MECHANISMS

    assert list(MECHANISMS) == list(MECHANISM_PARAMETERS)
    assert {name: uses_epsilon(name) for name in MECHANISMS} == {name: cls.uses_epsilon()
                                                               for name, cls in MECHANISMS.items()}
    assert [name for name in MECHANISMS if uses_epsilon(name)] == ["gaussian", "label_rr", "gaussian_r"]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the server's memory map (Linux)")
def test_serve_listens_before_loading_torch(tmp_path) -> None:
    # The modes' torch- and TenSEAL-backed classes load when a device opens a mode, not before listening.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))}
    cli = [sys.executable, "-c", "from secure_assist.cli import main; main()"]
    subprocess.run([*cli, "keys", "init", "--dir", str(tmp_path / "keys")], env=env, cwd=REPOSITORY, check=True,
                   capture_output=True, timeout=120)
    ready = tmp_path / "ready"
    server = subprocess.Popen([*cli, "serve", "--keys", str(tmp_path / "keys"), "--workdir", str(tmp_path / "state"),
                               "--port", "0", "--ready-file", str(ready)], env=env, cwd=REPOSITORY,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "serve did not start listening"
        libraries = Path(f"/proc/{server.pid}/maps").read_text()
        assert "libtorch" not in libraries and "tenseal" not in libraries
    finally:
        server.terminate()
        server.wait(timeout=60)
