"""The HMI's users: a small file of names, roles and scrypt password hashes.

There is no default user and no default password: an administrator creates each user with
`stima hmi user add NAME --role viewer|operator|engineer` (the password is asked twice, or read
from standard input with `--password-stdin`). One line per user:

    name:role:scrypt$<log2 N>$<r>$<p>$<salt, base64>$<hash, base64>

Hashes are scrypt (`hashlib.scrypt`, memory-hard) with a random 16-byte salt per password. The
file must not be readable or writable by others, nor writable by its group (the daemon's group
may read it): anyone who can write it can give themselves the operator role.
"""

from __future__ import annotations

import base64
import contextlib
import grp
import hashlib
import hmac
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from gateway.switching.model import Role

SCRYPT_LOG2_N = 15
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_MAXMEM = 128 * 1024 * 1024


class UsersFileError(ValueError):
    """The users file cannot be used; the message names the file, the line and what was expected."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    password_hash: str


def check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"user name {name!r}: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
    return password


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, log2_n: int = SCRYPT_LOG2_N, salt: bytes | None = None) -> str:
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=2**log2_n, r=SCRYPT_R, p=SCRYPT_P, maxmem=_MAXMEM, dklen=HASH_BYTES
    )
    return f"scrypt${log2_n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(stored: str, password: str) -> bool:
    """Whether `password` matches `stored` (constant-time comparison; False for a malformed hash)."""
    try:
        scheme, log2_n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt" or not 10 <= int(log2_n) <= 20 or not 1 <= int(r) <= 32 or not 1 <= int(p) <= 16:
            return False
        expected = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt),
            n=2 ** int(log2_n),
            r=int(r),
            p=int(p),
            maxmem=_MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def _check_hash(text: str) -> bool:
    parts = text.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        int(parts[1]), int(parts[2]), int(parts[3])
        base64.b64decode(parts[4], validate=True)
        base64.b64decode(parts[5], validate=True)
    except ValueError:
        return False
    return True


def parse(text: str, source: str) -> dict[str, User]:
    users: dict[str, User] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3:
            raise UsersFileError(f"{source}:{n}: expected name:role:hash (made by `stima hmi user add`)")
        name, role_text, password_hash = parts
        try:
            check_name(name)
            role = Role.parse(role_text)
        except ValueError as exc:
            raise UsersFileError(f"{source}:{n}: {exc}") from None
        if role is Role.NONE:
            raise UsersFileError(f"{source}:{n}: role must be viewer, operator or engineer")
        if not _check_hash(password_hash):
            raise UsersFileError(f"{source}:{n}: the password hash is not an scrypt hash made by `stima hmi user add`")
        if name in users:
            raise UsersFileError(f"{source}:{n}: user {name!r} is listed twice")
        users[name] = User(name, role, password_hash)
    return users


def check_mode(path: Path) -> None:
    """Refuse a users file that others may read or write, or its group may write."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UsersFileError(
            f"HMI users file {path} does not exist: create the first user with "
            f"`stima hmi user add NAME --role operator --users-file {path}`"
        ) from None
    except OSError as exc:
        raise UsersFileError(f"HMI users file {path} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsersFileError(f"HMI users file {path} is not a regular file")
    if st.st_mode & 0o027:
        raise UsersFileError(
            f"HMI users file {path} is accessible by others or writable by its group (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); expected 0600 or 0640 (chmod 640 {path})"
        )


def load(path: Path) -> dict[str, User]:
    check_mode(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsersFileError(f"HMI users file {path} cannot be read: {exc}") from None
    return parse(text, str(path))


def render(users: dict[str, User]) -> str:
    lines = ["# Stima HMI users: name:role:scrypt hash. Edit with `stima hmi user add|remove|passwd`."]
    lines += [f"{u.name}:{u.role.label}:{u.password_hash}" for u in sorted(users.values(), key=lambda u: u.name)]
    return "\n".join(lines) + "\n"


def save(path: Path, users: dict[str, User], group: str | None = "stima") -> None:
    """Write atomically, mode 0640, group `group` when it exists (the daemon reads it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render(users))
            f.flush()
            os.fsync(f.fileno())
        if group:
            with contextlib.suppress(KeyError, PermissionError):
                os.chown(tmp, -1, grp.getgrnam(group).gr_gid)
                os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


class UserDirectory:
    """The users file as the daemon reads it: loaded at start, read again when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._users: dict[str, User] = {}
        self._stamp: tuple[float, int, int] | None = None

    def refresh(self) -> dict[str, User]:
        """Read the file again if it changed (raises UsersFileError, keeping the users known)."""
        try:
            st = self.path.stat()
            stamp = (st.st_mtime, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if stamp is not None and stamp == self._stamp:
            return self._users
        users = load(self.path)
        self._users, self._stamp = users, stamp
        return users

    def get(self, name: str) -> User | None:
        return self._users.get(name)
