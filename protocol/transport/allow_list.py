"""The device allow-list as the server sees it: re-read whenever its file changes.

Adding or revoking a device takes effect without a restart: the file is replaced
atomically (a new inode), so a cheap `stat` tells whether to re-read it and rebuild
the TLS context that trusts its certificates.
"""

from __future__ import annotations

import os
import ssl

from protocol.transport.identity import KeyDirectory


class AllowList:
    """The devices a server may serve now, and the TLS context that trusts them."""

    def __init__(self, keys: KeyDirectory) -> None:
        self.keys = keys
        self.context: ssl.SSLContext | None = None
        self._entries: dict[str, dict] = {}
        self._stamp: tuple[int, int, int] | None = None

    def refresh(self) -> None:
        """Re-read the allow-list and rebuild the TLS context when the file changed."""
        stat = os.stat(self.keys.trust_file)
        stamp = (stat.st_mtime_ns, stat.st_ino, stat.st_size)
        if stamp != self._stamp:
            self._entries, self.context = self.keys.load_trust(), self.keys.server_context()
            self._stamp = stamp

    def refusal(self, identity: str) -> str | None:
        """None if `identity` may be served now, else why not ("unknown" or "revoked")."""
        self.refresh()
        entry = self._entries.get(identity)
        return "unknown" if entry is None else ("revoked" if entry.get("revoked", False) else None)

    def pools(self, identity: str) -> list[str]:
        """The pools an allowed identity may join."""
        return self._entries[identity].get("pools", [])

    def name(self, identity: str) -> str:
        """The device name an allowed identity was added under."""
        return self._entries[identity]["name"]


class KeyPoolAdmission:
    """Who may join which pool over the network: a device the allow-list serves now, in a pool its
    entry lists (`secure-assist keys add-device NAME --pool P`), named as it was added."""

    def __init__(self, keys: KeyDirectory) -> None:
        self.allowed = AllowList(keys)

    def refusal(self, identity: str, pool: str) -> str | None:
        """None if `identity` may be served as a member of `pool` now, else why not."""
        why = self.allowed.refusal(identity)
        if why is not None:
            return f"device certificate {why}"
        if pool not in self.allowed.pools(identity):
            return "the key directory does not list it as a member"
        return None

    def name(self, identity: str) -> str:
        """The device name an identity was added under (KeyError: not in the key directory)."""
        self.allowed.refresh()
        return self.allowed.name(identity)
