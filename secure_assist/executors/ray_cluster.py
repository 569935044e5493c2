"""The Ray executor: each item is a Ray task, on a local Ray instance or an existing cluster.

Without an address a new local instance starts with this machine's available cores
(`address="local"`: never a cluster someone else started here); with one, the driver
joins that cluster. Each task takes one CPU, so a node runs as many items at once as it
has cores. The shared value goes into the object store once; every task on a node reads
that one copy (numpy arrays without copying). Ray moves task arguments and results with
pickle between the processes of the cluster: run it on a private network you trust, as
Ray's own security guide says (new clusters use token authentication).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Hashable

from protocol.errors import UserInputError
from secure_assist.executors.base import Executor, describe_error

INSTALL = 'pip install -e ".[ray]" (or pip install "secure-assist[ray]")'


def _call(work: Callable[[Any, Any], Any], item: Any, shared: Any) -> Any:
    """The body of every task (Ray hands `shared` over as its value)."""
    return work(item, shared)


def _auth_refused(exc: BaseException | None) -> bool:
    """Whether Ray refused the connection for want of the cluster's token (Ray reports it
    as text inside a RuntimeError, not as a chained AuthenticationError)."""
    while exc is not None:
        if "AuthenticationError" in type(exc).__name__ or "InvalidAuthToken" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class RayExecutor(Executor):
    """Runs the work as Ray tasks, at most one per CPU of the cluster at a time."""

    NAME = "ray"
    IN_PROCESS = False

    def __init__(self, address: str | None = None, cpus: int | None = None) -> None:
        if address and cpus is not None:
            raise UserInputError("--ray-cpus sizes a local Ray instance; a cluster joined with --ray-address "
                                 "has its own CPUs")
        if cpus is not None and cpus < 1:
            raise UserInputError(f"--ray-cpus must be at least 1, got {cpus}")
        try:
            import ray
        except ImportError as exc:
            raise UserInputError(f"--executor ray needs Ray, an optional extra: {INSTALL}") from exc
        self._ray = ray
        self.address = address
        self.cpus = cpus or len(os.sched_getaffinity(0))
        self._remote: Any = None
        self._owns_ray = False

    @classmethod
    def from_options(cls, ray_address: str | None, ray_cpus: int | None) -> "RayExecutor":
        """Join `ray_address`, or start a local instance with `ray_cpus` (default: the available cores)."""
        return cls(ray_address, ray_cpus)

    def start(self) -> str:
        """Start or join Ray now (otherwise the first run does); the cluster's address."""
        self._start()
        return self._ray.get_runtime_context().gcs_address

    def _start(self) -> None:
        if self._remote is not None:
            return
        ray = self._ray
        if not ray.is_initialized():
            try:
                ray.init(address=self.address or "local", num_cpus=None if self.address else self.cpus,
                         include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
                hint = ("; the cluster uses token authentication: set RAY_AUTH_MODE=token and give its token "
                        "(~/.ray/auth_token or RAY_AUTH_TOKEN)"
                        if _auth_refused(exc) else "")
                raise UserInputError(f"cannot start or join Ray at {self.address or 'a local instance'}: "
                                     f"{describe_error(exc)}{hint}") from exc
            self._owns_ray = True
        # Retries are the executor's own (one, whatever failed), not Ray's.
        self._remote = ray.remote(num_cpus=1, max_retries=0, retry_exceptions=False)(_call)

    def _share(self, shared: Any) -> Any:
        self._start()
        return self._ray.put(shared)

    def _slots(self) -> int:
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def _submit(self, work: Callable[[Any, Any], Any], item: Any, shared: Any) -> Hashable:
        return self._remote.remote(work, item, shared)

    def _next(self, handles: list[Hashable]) -> tuple[Hashable, Any, str | None]:
        ray = self._ray
        (ready,), _ = ray.wait(handles, num_returns=1)
        try:
            return ready, ray.get(ready), None
        except ray.exceptions.RayTaskError as exc:  # the work raised: report its own exception
            return ready, None, describe_error(exc.cause if exc.cause is not None else exc)
        except ray.exceptions.RayError as exc:  # the worker or its node died
            return ready, None, describe_error(exc)

    def close(self) -> None:
        """Leave Ray if this executor joined it: a local instance it started stops, a cluster keeps running."""
        if self._owns_ray:
            self._ray.shutdown()
            self._owns_ray = False
        self._remote = None
