"""Training modes, chosen by name: `MODES` is the one list (CLI choices, errors, the
server's offered modes, docs and the contract tests come from it).

Adding a mode is one folder (`protocol/modes/<name>/`: its messages, device session, server
endpoint) with a `TrainingMode` subclass, plus its line here. Which mode a set of
mechanisms runs under is chosen on the device side (`secure_assist.training.run.resolve_mode`).
"""

from __future__ import annotations

from protocol.errors import UserInputError
from protocol.modes.base import TrainingMode
from protocol.modes.ckks_ridge.mode import CkksRidgeMode
from protocol.modes.device_local.mode import DeviceLocalMode
from protocol.modes.generation.mode import GenerationMode
from protocol.modes.generation_local.mode import GenerationLocalMode
from protocol.modes.pooled.mode import PooledMode
from protocol.modes.side_network.mode import SideNetworkMode

MODES: dict[str, TrainingMode] = {mode.name: mode for mode in (SideNetworkMode(), CkksRidgeMode(), DeviceLocalMode(),
                                                               GenerationMode(), GenerationLocalMode(),
                                                               PooledMode())}

__all__ = ["MODES", "get_mode", "server_modes"]


def get_mode(name: str) -> TrainingMode:
    """A registered mode; unknown names list the known ones."""
    if name not in MODES:
        raise UserInputError(f"unknown training mode {name!r}; choose from {', '.join(MODES)}")
    return MODES[name]


def server_modes() -> tuple[str, ...]:
    """The modes a server can host (those that upload)."""
    return tuple(name for name, mode in MODES.items() if mode.uploads)
