"""Identities for mutually authenticated TLS 1.3: keys, self-signed certificates, pins.

A key directory holds
    server.key / server.crt          the server identity (the device pins server.crt)
    devices/<name>.key / .crt        device identities (each device needs only its own pair)
    trusted_devices.json             the server's allow-list: certificate fingerprint ->
                                     {name, revoked, certificate PEM, pools it may join}
Identities are ECDSA P-256 keys with self-signed certificates made by `cryptography`; a
peer is trusted because its exact certificate is pinned (SHA-256 fingerprint), not because
a CA vouches for it. Revoking a device marks its fingerprint; the server re-reads the list
for every new connection, so revocation needs no restart.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protocol.errors import UserInputError
from protocol.files import write_atomic
from protocol.wire.messages import POOL_NAME

SERVER_NAME = "server"
TRUST_FILE = "trusted_devices.json"
DEVICES_DIR = "devices"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_VALIDITY = datetime.timedelta(days=3650)


def fingerprint(certificate_der: bytes) -> str:
    """SHA-256 of the DER certificate, hex: the identity of a peer."""
    return hashlib.sha256(certificate_der).hexdigest()


def pem_fingerprint(certificate_pem: bytes) -> str:
    """Fingerprint of a PEM certificate."""
    return fingerprint(x509.load_pem_x509_certificate(certificate_pem).public_bytes(serialization.Encoding.DER))


def _check_name(name: str) -> None:
    if not _NAME.match(name) or name == SERVER_NAME:
        raise UserInputError(f"identity name {name!r} must be 1-64 of [A-Za-z0-9_.-] and not {SERVER_NAME!r}")


def make_identity(common_name: str) -> tuple[bytes, bytes]:
    """A fresh ECDSA P-256 key and a self-signed certificate for it (PEM key, PEM cert)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


def _write_private(path: Path, data: bytes) -> None:
    write_atomic(path, data)
    path.chmod(0o600)


@dataclass(frozen=True)
class KeyDirectory:
    """Paths and operations on one key directory."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def server_key(self) -> Path:
        return self.root / f"{SERVER_NAME}.key"

    @property
    def server_cert(self) -> Path:
        return self.root / f"{SERVER_NAME}.crt"

    @property
    def trust_file(self) -> Path:
        return self.root / TRUST_FILE

    def device_key(self, name: str) -> Path:
        _check_name(name)
        return self.root / DEVICES_DIR / f"{name}.key"

    def device_cert(self, name: str) -> Path:
        _check_name(name)
        return self.root / DEVICES_DIR / f"{name}.crt"

    def init(self, device_names: list[str]) -> None:
        """Create the server identity and the named device identities (refuses to overwrite)."""
        if self.server_key.exists():
            raise UserInputError(f"{self.root} already holds a server identity")
        key, cert = make_identity(SERVER_NAME)
        _write_private(self.server_key, key)
        write_atomic(self.server_cert, cert)
        self._save_trust({})
        for name in device_names:
            self.add_device(name)

    def add_device(self, name: str, pools: tuple[str, ...] = ()) -> str:
        """Create a device identity, trust it on the server (as a member of `pools`); return its fingerprint."""
        bad = [pool for pool in pools if not POOL_NAME.fullmatch(pool)]
        if bad:
            raise UserInputError(f"pool names {bad} must be 1-64 of [A-Za-z0-9_.-]")
        if self.device_key(name).exists():
            raise UserInputError(f"device {name!r} already exists in {self.root}")
        key, cert = make_identity(name)
        _write_private(self.device_key(name), key)
        write_atomic(self.device_cert(name), cert)
        trust = self.load_trust()
        digest = pem_fingerprint(cert)
        trust[digest] = {"name": name, "revoked": False, "certificate": cert.decode(), "pools": sorted(set(pools))}
        self._save_trust(trust)
        return digest

    def revoke(self, name_or_fingerprint: str) -> str:
        """Mark a trusted device revoked; return its fingerprint."""
        trust = self.load_trust()
        matches = [fp for fp, entry in trust.items() if name_or_fingerprint in (fp, entry["name"])]
        if len(matches) != 1:
            raise UserInputError(f"no single trusted device named or fingerprinted {name_or_fingerprint!r}")
        trust[matches[0]]["revoked"] = True
        self._save_trust(trust)
        return matches[0]

    def load_trust(self) -> dict[str, dict]:
        """The server's allow-list (fingerprint -> entry)."""
        try:
            data = json.loads(self.trust_file.read_text())
        except FileNotFoundError as exc:
            raise UserInputError(f"{self.trust_file} is missing; run `secure-assist keys init`") from exc
        except json.JSONDecodeError as exc:
            raise UserInputError(f"{self.trust_file} is not valid JSON: {exc.msg}") from exc
        devices = data.get("devices") if isinstance(data, dict) else None
        if not isinstance(devices, dict):
            raise UserInputError(f"{self.trust_file} must hold {{'devices': {{fingerprint: entry}}}}")
        return devices

    def trusted_fingerprints(self) -> dict[str, str]:
        """Fingerprint -> name of every device that is trusted and not revoked."""
        return {fp: e["name"] for fp, e in self.load_trust().items() if not e.get("revoked", False)}

    def _save_trust(self, devices: dict[str, dict]) -> None:
        write_atomic(self.trust_file, json.dumps({"devices": devices}, indent=2).encode())

    def _require(self, *paths: Path) -> None:
        for path in paths:
            if not path.is_file():
                raise UserInputError(f"{path} is missing; run `secure-assist keys init` or copy it here")

    def server_context(self) -> ssl.SSLContext:
        """TLS 1.3 server context that demands a client certificate from the allow-list.

        Revoked certificates stay verifiable so the server can complete the handshake and
        log (and tell the device) "revoked" rather than a bare verification failure; the
        caller must then check `trusted_fingerprints()` before serving anything.
        """
        self._require(self.server_key, self.server_cert)
        pems = [e["certificate"] for e in self.load_trust().values()]
        if not pems:
            raise UserInputError(f"{self.trust_file} trusts no device; run `secure-assist keys add-device`")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(self.server_cert, self.server_key)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata="".join(pems))
        return context

    def device_context(self, name: str, server_cert: Path | None = None) -> tuple[ssl.SSLContext, str]:
        """TLS 1.3 client context presenting device `name`, and the pinned server fingerprint."""
        pinned = server_cert or self.server_cert
        self._require(self.device_key(name), self.device_cert(name), pinned)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        # Identity is the pinned certificate itself, not a host name vouched for by a CA.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=pinned.read_text())
        context.load_cert_chain(self.device_cert(name), self.device_key(name))
        return context, pem_fingerprint(pinned.read_bytes())
