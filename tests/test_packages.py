"""The three import packages resolve to this project, not to look-alikes elsewhere."""

from pathlib import Path

import attacks
import protocol
import secure_assist

ROOT = Path(__file__).resolve().parents[1]


def test_packages_import_from_this_project() -> None:
    for package in (protocol, secure_assist, attacks):
        assert Path(package.__file__).resolve().parent.parent == ROOT, package.__file__
