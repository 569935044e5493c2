"""What every executor does: run one work function over many items, retry a failure once,
report each outcome as it finishes, and keep one progress bar up to date.

An executor only decides *where* `work(item, shared)` runs (this process, a Ray worker);
the work functions themselves are the same for all, so results are identical by
construction. `shared` is put once where the work can read it (Ray: the object store).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Hashable, Iterator, Sequence

from tqdm import tqdm


@dataclass(frozen=True)
class Outcome:
    """What became of one item: its value, or the error of its last attempt."""

    index: int
    value: Any = None
    error: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        """Whether the work returned."""
        return self.error is None


def describe_error(exc: BaseException) -> str:
    """One line naming the exception type and its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class Progress:
    """The one bar of a sweep or audit: finished, failed and running counts."""

    def __init__(self, total: int, description: str, enabled: bool, done: int = 0) -> None:
        self.finished, self.failed, self.running = done, 0, 0
        self._bar = tqdm(total=total, initial=done, desc=description, unit="run", disable=not enabled)
        self._show()

    def _show(self, refresh: bool = True) -> None:
        self._bar.set_postfix_str(f"finished={self.finished} failed={self.failed} running={self.running}",
                                  refresh=refresh)

    def started(self) -> None:
        """An attempt began."""
        self.running += 1
        self._show()

    def stopped(self, outcome: Outcome | None) -> None:
        """An attempt ended: with its final outcome, or None when it will be retried."""
        self.running -= 1
        if outcome is None:
            self._show()
            return
        self.finished += outcome.ok
        self.failed += not outcome.ok
        self._show(refresh=False)
        self._bar.update(1)  # redraws with the new counts

    def close(self) -> None:
        """Leave the bar as it ends."""
        self._bar.close()


class Executor(ABC):
    """Runs `work(item, shared)` for many items; subclasses say where."""

    NAME: ClassVar[str]
    # Inner progress bars make sense only when the work runs in this process.
    IN_PROCESS: ClassVar[bool]
    RETRIES: ClassVar[int] = 1

    @classmethod
    @abstractmethod
    def from_options(cls, ray_address: str | None, ray_cpus: int | None) -> "Executor":
        """The executor for the command line's options (an option it cannot use is a `UserInputError`)."""

    @abstractmethod
    def _share(self, shared: Any) -> Any:
        """A handle of `shared` that submitted work receives as its value."""

    @abstractmethod
    def _slots(self) -> int:
        """How many attempts may run at once."""

    @abstractmethod
    def _submit(self, work: Callable[[Any, Any], Any], item: Any, shared: Any) -> Hashable:
        """Start one attempt; a handle for `_next`."""

    @abstractmethod
    def _next(self, handles: list[Hashable]) -> tuple[Hashable, Any, str | None]:
        """Wait for one of the running attempts: (handle, value, None) or (handle, None, error)."""

    def close(self) -> None:
        """Release what the executor started (nothing by default)."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, work: Callable[[Any, Any], Any], items: Sequence[Any], shared: Any,
            progress: Progress) -> Iterator[Outcome]:
        """Each item's outcome as soon as it is final, in completion order; a failed attempt
        is retried `RETRIES` times, then reported with its error while the others go on."""
        if not items:
            return
        handle_of_shared = self._share(shared)
        pending, attempts = deque(range(len(items))), [0] * len(items)
        running: dict[Hashable, int] = {}
        while pending or running:
            while pending and len(running) < self._slots():
                index = pending.popleft()
                attempts[index] += 1
                running[self._submit(work, items[index], handle_of_shared)] = index
                progress.started()
            handle, value, error = self._next(list(running))
            index = running.pop(handle)
            if error is not None and attempts[index] <= self.RETRIES:
                pending.appendleft(index)
                progress.stopped(None)
                continue
            outcome = Outcome(index=index, value=value, error=error, attempts=attempts[index])
            progress.stopped(outcome)
            yield outcome

    def map(self, work: Callable[[Any, Any], Any], items: Sequence[Any], shared: Any, description: str,
            progress: bool) -> list[Outcome]:
        """Every item's final outcome, in item order, with one progress bar."""
        bar = Progress(len(items), description, progress)
        try:
            return sorted(self.run(work, items, shared, bar), key=lambda outcome: outcome.index)
        finally:
            bar.close()
