"""Training modes, chosen by name: `MODES` is the one list (CLI choices, errors, the
server's offered modes, docs and the contract tests come from it).

Adding a mode is one module with a `TrainingMode` subclass plus its line here.
"""

from __future__ import annotations

from protocol.errors import UserInputError
from secure_assist.mechanisms import MECHANISMS
from secure_assist.modes.base import TrainingMode, TrainOutcome
from secure_assist.modes.ckks_ridge import CkksRidgeMode
from secure_assist.modes.device_local import DeviceLocalMode
from secure_assist.modes.generation import GenerationLocalMode, GenerationMode
from secure_assist.modes.side_network import SideNetworkMode

MODES: dict[str, TrainingMode] = {mode.name: mode for mode in (SideNetworkMode(), CkksRidgeMode(), DeviceLocalMode(),
                                                               GenerationMode(), GenerationLocalMode())}

__all__ = ["MODES", "TrainOutcome", "TrainingMode", "get_mode", "resolve_mode", "server_modes"]


def get_mode(name: str) -> TrainingMode:
    """A registered mode; unknown names list the known ones."""
    if name not in MODES:
        raise UserInputError(f"unknown training mode {name!r}; choose from {', '.join(MODES)}")
    return MODES[name]


def resolve_mode(mode: str | None, mechanisms: tuple[str, ...], task_kind: str = "classification") -> TrainingMode:
    """The configured mode, or (None) the first uploading mode of the task kind that every
    mechanism supports (`side_network`, `ckks_ridge` for `he_ckks`; `generation`)."""
    if mode is not None:
        chosen = get_mode(mode)
        if chosen.task_kind != task_kind:
            raise UserInputError(f"training mode {mode!r} trains {chosen.task_kind} tasks, not {task_kind} ones")
        return chosen
    known = [MECHANISMS[n] for n in mechanisms if n in MECHANISMS]
    for candidate in server_modes():
        if MODES[candidate].task_kind == task_kind and all(cls.supports(MODES[candidate]) for cls in known):
            return MODES[candidate]
    raise UserInputError(f"no {task_kind} training mode supports every mechanism of {list(mechanisms)}")


def server_modes() -> tuple[str, ...]:
    """The modes a server can host (those that upload)."""
    return tuple(name for name, mode in MODES.items() if mode.uploads)
