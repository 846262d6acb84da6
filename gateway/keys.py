"""Ed25519 signatures for messages between the gateway and the systems it trusts.

A gateway holds only public keys: every SCADA host or operator signs with its own private key,
so a stolen gateway (or its key book) cannot forge anyone's command. The key book lists each
public key with a role (operator, engineer) and an optional expiry; keys are added and revoked
(`stima keys …`, engineer role), and every change is audited in the event log. The gateway's
own messages to its neighbours are signed with its own key pair (`load_or_create_keypair`).

The signed bytes are the *canonical form* of the envelope without `sig` (docs/mqtt.md,
"Canonical form"): msgpack, every map's keys sorted by their UTF-8 bytes at every depth, each
string, byte string, array, map and integer in its shortest msgpack encoding, every float as
float 64, text as str and bytes as bin. `canonical()` is that form; `sign()` adds `key` (the
signer's key name) and `sig` (64 bytes); `verify()` checks them.

Sans-IO except `load_or_create_keypair`, which reads or writes one file in the state directory.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.switching.model import Role

SIG_BYTES = 64
PUBLIC_KEY_BYTES = 32
KEY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,63}$")
SNAPSHOT_KEY = "keys"
GATEWAY_KEY_FILE = "gateway-ed25519.key"


class KeyRefused(Exception):
    """A signature not accepted: `reason` is `malformed`, `unknown_key`, `key_revoked`,
    `key_expired` or `bad_signature`; the message says what and why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --------------------------------------------------------------------------- the canonical form


def _sorted(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        keys = list(obj)
        if not all(isinstance(k, str) for k in keys):
            raise TypeError("map keys must be strings")
        return {k: _sorted(obj[k]) for k in sorted(keys, key=lambda k: k.encode("utf-8"))}
    if isinstance(obj, list | tuple):
        return [_sorted(v) for v in obj]
    return obj


def canonical(fields: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: `fields` without `sig`, in the canonical msgpack form.

    TypeError when a map has a key that is not a string (no canonical form)."""
    return bytes(msgpack.packb(_sorted({k: v for k, v in fields.items() if k != "sig"}), use_bin_type=True))


# --------------------------------------------------------------------------- signing and verifying


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def parse_public_key(text: str | bytes) -> bytes:
    """32 raw bytes from hex (64 digits) or a PEM SubjectPublicKeyInfo; ValueError saying what was expected."""
    raw = text.encode() if isinstance(text, str) else bytes(text)
    stripped = raw.strip()
    if stripped.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(stripped)
        except ValueError as exc:
            raise ValueError(f"not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"a PEM {type(key).__name__}; expected an Ed25519 public key") from None
        return public_bytes(key)
    try:
        out = bytes.fromhex(stripped.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ValueError("expected 64 hex digits or a PEM Ed25519 public key") from None
    if len(out) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, found {len(out)}")
    return out


def sign(envelope: Mapping[str, Any], private_key: Ed25519PrivateKey, key_name: str) -> dict[str, Any]:
    """`envelope` with `key` (the signer's key name) and `sig` (Ed25519 over the canonical form)."""
    if not KEY_NAME_RE.match(key_name):
        raise ValueError(f"key name {key_name!r}: 1-64 letters, digits and _.:@- expected")
    out = {k: v for k, v in envelope.items() if k != "sig"}
    out["key"] = key_name
    out["sig"] = private_key.sign(canonical(out))
    return out


def verify(envelope: Mapping[str, Any], public_key: bytes | Ed25519PublicKey) -> dict[str, Any]:
    """The envelope's fields without `sig` when `sig` is a valid signature by `public_key`; else KeyRefused."""
    sig = envelope.get("sig")
    if not isinstance(sig, bytes) or len(sig) != SIG_BYTES:
        raise KeyRefused("malformed", f"sig: expected {SIG_BYTES} bytes (msgpack bin), found {type(sig).__name__}")
    try:
        body = canonical(envelope)
    except (TypeError, ValueError, OverflowError):
        raise KeyRefused("malformed", "a map whose keys are not all strings has no canonical form") from None
    key = public_key if isinstance(public_key, Ed25519PublicKey) else Ed25519PublicKey.from_public_bytes(public_key)
    try:
        key.verify(sig, body)
    except InvalidSignature:
        raise KeyRefused(
            "bad_signature", "signature does not match (another key, or the message was altered after signing)"
        ) from None
    return {k: v for k, v in envelope.items() if k != "sig"}


# --------------------------------------------------------------------------- the gateway's own key pair


@dataclass(frozen=True)
class KeyPair:
    name: str
    private: Ed25519PrivateKey
    path: Path

    @property
    def public(self) -> bytes:
        return public_bytes(self.private.public_key())

    def sign(self, envelope: Mapping[str, Any]) -> dict[str, Any]:
        return sign(envelope, self.private, self.name)


def load_or_create_keypair(state_dir: Path, name: str) -> KeyPair:
    """The gateway's own Ed25519 key pair in `state_dir` (PKCS#8 PEM, mode 0600), made on first use.

    ValueError naming the file when it is open to group or others or is not an Ed25519 key."""
    path = state_dir / GATEWAY_KEY_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        return KeyPair(name, key, path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ValueError(f"{path} is accessible by group or others (mode {mode:04o}); expected 0600 (chmod 600 {path})")
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a {type(loaded).__name__}; expected an Ed25519 private key")
    return KeyPair(name, loaded, path)


def generate_private_pem() -> tuple[bytes, bytes]:
    """(PKCS#8 PEM of a new private key, its 32-byte public key): for a SCADA host or an operator."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem, public_bytes(key.public_key())


def load_private_pem(data: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"a {type(key).__name__}; expected an Ed25519 private key")
    return key


# --------------------------------------------------------------------------- the key book


@dataclass(frozen=True, slots=True)
class BookEntry:
    name: str
    public: bytes
    role: Role
    expires: float | None
    added: float
    added_by: str
    revoked: float | None = None
    revoked_by: str | None = None
    revoked_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "public_key": self.public.hex(),
            "role": str(self.role),
            "expires": self.expires,
            "added": self.added,
            "added_by": self.added_by,
            "revoked": self.revoked,
            "revoked_by": self.revoked_by,
            "revoked_reason": self.revoked_reason,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BookEntry:
        return cls(
            name=str(d["name"]),
            public=bytes.fromhex(str(d["public_key"])),
            role=Role.parse(str(d["role"])),
            expires=None if d.get("expires") is None else float(d["expires"]),
            added=float(d["added"]),
            added_by=str(d["added_by"]),
            revoked=None if d.get("revoked") is None else float(d["revoked"]),
            revoked_by=d.get("revoked_by"),
            revoked_reason=d.get("revoked_reason"),
        )


class KeyBook:
    """Public keys the gateway accepts signatures from. Sans-IO: the daemon persists `snapshot()`
    in the state database and writes `take_audit()` to the event log."""

    def __init__(self, entries: Mapping[str, BookEntry] | None = None) -> None:
        self._entries: dict[str, BookEntry] = dict(entries or {})
        self._audit: list[tuple[str, dict[str, Any]]] = []

    def add(self, name: str, public: bytes, role: Role, *, expires: float | None, who: str, now: float) -> BookEntry:
        if not KEY_NAME_RE.match(name):
            raise ValueError(f"key name {name!r}: 1-64 letters, digits and _.:@- expected")
        if role not in (Role.OPERATOR, Role.ENGINEER):
            raise ValueError(f"a signing key's role is operator or engineer, not {role}")
        if len(public) != PUBLIC_KEY_BYTES:
            raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, found {len(public)}")
        Ed25519PublicKey.from_public_bytes(public)
        if expires is not None and expires <= now:
            raise ValueError("the expiry is in the past")
        old = self._entries.get(name)
        if old is not None and old.revoked is None:
            raise ValueError(f"key {name} is in the book already (revoke it first to replace it)")
        entry = BookEntry(name, public, role, expires, now, who)
        self._entries[name] = entry
        self._audit.append(
            (
                "keys.added",
                {"key": name, "role": str(role), "public_key": public.hex(), "expires": expires, "origin": who},
            )
        )
        return entry

    def revoke(self, name: str, *, who: str, reason: str, now: float) -> BookEntry:
        entry = self._entries.get(name)
        if entry is None:
            raise KeyError(f"no key {name!r} in the key book")
        if entry.revoked is not None:
            raise ValueError(f"key {name} was revoked already")
        if not reason.strip():
            raise ValueError("a revocation needs a reason")
        entry = replace(entry, revoked=now, revoked_by=who, revoked_reason=reason.strip())
        self._entries[name] = entry
        self._audit.append(("keys.revoked", {"key": name, "origin": who, "reason": entry.revoked_reason}))
        return entry

    def check(self, name: Any, now: float) -> BookEntry:
        """The entry that may sign now, or KeyRefused (`unknown_key`, `key_revoked`, `key_expired`)."""
        entry = self._entries.get(name) if isinstance(name, str) else None
        if entry is None:
            raise KeyRefused(
                "unknown_key", f"key {str(name)[:64]!r} is not in the gateway's key book (stima keys list)"
            )
        if entry.revoked is not None:
            raise KeyRefused(
                "key_revoked", f"key {entry.name} was revoked by {entry.revoked_by}: {entry.revoked_reason}"
            )
        if entry.expires is not None and now >= entry.expires:
            raise KeyRefused("key_expired", f"key {entry.name} expired at {entry.expires:.0f} (s since the epoch)")
        return entry

    def verify(self, envelope: Mapping[str, Any], now: float) -> tuple[dict[str, Any], BookEntry]:
        """(checked fields, the key that signed) or KeyRefused."""
        entry = self.check(envelope.get("key"), now)
        return verify(envelope, entry.public), entry

    def entries(self) -> list[BookEntry]:
        return sorted(self._entries.values(), key=lambda e: e.name)

    def take_audit(self) -> list[tuple[str, dict[str, Any]]]:
        out, self._audit = self._audit, []
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"version": 1, "keys": [e.as_dict() for e in self.entries()]}

    @classmethod
    def restore(cls, data: Any) -> KeyBook:
        if not data:
            return cls()
        if not isinstance(data, Mapping) or data.get("version") != 1:
            raise ValueError("key book snapshot: expected a map with version 1")
        return cls({e.name: e for e in (BookEntry.from_dict(d) for d in data.get("keys", []))})
