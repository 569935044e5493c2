"""The default executor: every item in this process, one after another (no Ray import)."""

from __future__ import annotations

from typing import Any, Callable, Hashable

from protocol.errors import UserInputError
from secure_assist.executors.base import Executor, describe_error


class LocalExecutor(Executor):
    """Runs the work here, sequentially; the shared value is passed as it is."""

    NAME = "local"
    IN_PROCESS = True

    def __init__(self) -> None:
        self._queued: dict[int, tuple[Callable[[Any, Any], Any], Any, Any]] = {}
        self._count = 0

    @classmethod
    def from_options(cls, ray_address: str | None, ray_cpus: int | None) -> "LocalExecutor":
        """The local executor; Ray options are a mistake here."""
        if ray_address is not None or ray_cpus is not None:
            raise UserInputError("--ray-address and --ray-cpus need --executor ray")
        return cls()

    def _share(self, shared: Any) -> Any:
        return shared

    def _slots(self) -> int:
        return 1

    def _submit(self, work: Callable[[Any, Any], Any], item: Any, shared: Any) -> Hashable:
        self._count += 1
        self._queued[self._count] = (work, item, shared)
        return self._count

    def _next(self, handles: list[Hashable]) -> tuple[Hashable, Any, str | None]:
        (handle,) = handles  # one slot: exactly one attempt is queued
        work, item, shared = self._queued.pop(handle)
        try:
            return handle, work(item, shared), None
        except Exception as exc:  # a failed run is reported (and retried once), the others go on
            return handle, None, describe_error(exc)
