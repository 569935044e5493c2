"""The named pools one server hosts, and who may join which.

`serve --pool NAME:QUORUM` hosts a pool; the key directory says which device identity may join
which pool (`PoolAdmission`); a device names its pool in its `Hello`. In process
(`secure_assist.devices.pooled_run`) every device may join and is named by its namespace.
A device that names no pool trains in a pool of one of its own (its namespace holds it).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from protocol.errors import ProtocolError, UserInputError
from protocol.server.limits import ServerLimits
from protocol.server.training_settings import ServerTraining
from protocol.wire.messages import POOL_NAME

if TYPE_CHECKING:  # torch-backed: imported when a device joins, so that `serve` listens first
    from protocol.modes.pooled.member import PoolMemberServer
    from protocol.modes.pooled.pool import Pool

POOLS_DIR = "pools"
PRIVATE_POOL_DIR = "own_pool"  # inside the namespace of a device that names no pool
POOL_FILE = "pool"  # inside a member's namespace: the pool it belongs to, for good


class PoolAdmission(Protocol):
    """Who may join which pool, and under which member name."""

    def refusal(self, identity: str, pool: str) -> str | None:
        """None if `identity` may be served as a member of `pool` now, else why not."""

    def name(self, identity: str) -> str:
        """The member name of an admitted identity (it fixes the order of the pool's samples)."""


class OpenAdmission:
    """In process: every device may join, named by its namespace."""

    def refusal(self, identity: str, pool: str) -> str | None:
        """Nobody is refused."""
        return None

    def name(self, identity: str) -> str:
        """The namespace's own name."""
        return identity


def parse_pool(text: str) -> tuple[str, int]:
    """'NAME:QUORUM' -> (name, quorum)."""
    name, _, quorum = text.rpartition(":")
    if not POOL_NAME.fullmatch(name) or not quorum.isdigit() or int(quorum) < 1:
        raise UserInputError(f"pool {text!r} must be NAME:QUORUM (NAME 1-64 of [A-Za-z0-9_.-], QUORUM >= 1)")
    return name, int(quorum)


class PoolDirectory:
    """The hosted pools (name -> quorum), their state under `root`, and the endpoints of their members,
    whose namespaces are the folders of `namespaces` (a restart recovers each pool's members from them)."""

    def __init__(self, root: Path | str, namespaces: Path | str, quorums: dict[str, int], training: ServerTraining,
                 limits: ServerLimits | None = None, admission: PoolAdmission = OpenAdmission()) -> None:
        self.root, self.namespaces, self.quorums, self.training = Path(root), Path(namespaces), dict(quorums), training
        self.limits, self.admission = limits, admission
        if limits is not None:
            too_large = [name for name, quorum in self.quorums.items() if quorum > limits.max_pool_members]
            if too_large:
                raise UserInputError(f"pools {too_large} need more members than --max-pool-members "
                                     f"{limits.max_pool_members}")
        self._pools: dict[str, Pool] = {}
        self._lock = threading.Lock()

    def pool(self, name: str) -> Pool:
        """The hosted pool `name` (its state is built on first use)."""
        from protocol.modes.pooled.pool import Pool

        with self._lock:
            if name not in self._pools:
                pool = Pool(name, self.quorums[name], self.root / POOLS_DIR / name, self.training, self.limits,
                            active=lambda identity: self.admission.refusal(identity, name) is None)
                self._recover(pool)
                self._pools[name] = pool
            return self._pools[name]

    def _recover(self, pool: Pool) -> None:
        """The members an earlier run of the server admitted to `pool`, from their namespaces: what
        they hold and whether they had finished their upload (a restart loses no member)."""
        from protocol.modes.pooled.member import ready_epochs
        from protocol.server.cache import ActivationCache
        from protocol.server.transcript import CACHE_FILE

        marks = sorted(self.namespaces.glob(f"*/{POOL_FILE}")) if self.namespaces.is_dir() else []
        for namespace in [mark.parent for mark in marks if mark.read_text().strip() == pool.name]:
            try:
                name = self.admission.name(namespace.name)
            except KeyError:
                continue  # no longer in the key directory at all (a revoked member stays, and is not trained on)
            cache = ActivationCache(namespace / CACHE_FILE)
            try:
                samples = len(cache)
            finally:
                cache.close()
            pool.join(name, namespace.name, namespace, samples, ready_epochs(namespace))

    def admit(self, pool: str, workdir: Path) -> None:
        """Admit the device whose namespace is `workdir` to `pool`; an unknown pool, one the device may
        not join, or a full one is refused (before its namespace is touched)."""
        if pool not in self.quorums:
            raise ProtocolError(f"this server hosts no pool {pool!r}")
        identity = Path(workdir).name
        why = self.admission.refusal(identity, pool)
        if why is not None:
            raise ProtocolError(f"this device may not join pool {pool!r}: {why}")
        self.pool(pool).join(self.admission.name(identity), identity, Path(workdir))

    def member_server(self, pool: str, workdir: Path, training: ServerTraining, limits: ServerLimits | None = None,
                      stop: threading.Event | None = None) -> PoolMemberServer:
        """The endpoint of a device `admit` admitted to `pool`."""
        from protocol.modes.pooled.member import PoolMemberServer

        return PoolMemberServer(workdir, training, self.pool(pool), self.admission.name(Path(workdir).name), limits,
                                stop)


def private_member_server(workdir: Path, training: ServerTraining, limits: ServerLimits | None = None,
                          stop: threading.Event | None = None) -> PoolMemberServer:
    """A device that names no pool: a pool of one, in its own namespace."""
    from protocol.modes.pooled.member import PoolMemberServer
    from protocol.modes.pooled.pool import Pool

    workdir = Path(workdir)
    pool = Pool("", 1, workdir / PRIVATE_POOL_DIR, training, limits)
    pool.join(workdir.name, workdir.name, workdir)
    return PoolMemberServer(workdir, training, pool, workdir.name, limits, stop)
