"""API keys: the keys file, and a lookup that follows the file's changes.

One key per line: ``OWNER ROLE SHA256``. The file holds only the SHA-256 of each key,
never the key, so a leaked file (or a backup of it) opens nothing. ``KeyRing`` re-reads
the file when its size or modification time changes, so ``dlaas keys add`` and
``dlaas keys revoke`` take effect on a running service within ``check_interval_s``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dlaas.errors import ConfigError

Role = Literal["user", "admin"]
ROLES: tuple[Role, ...] = ("user", "admin")
ANONYMOUS = "anonymous"  # the single owner when no keys are configured; never a key's owner
KEY_BYTES = 32
KEY_PREFIX = "dlaas_"
_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class KeyEntry:
    """One line of the keys file."""

    owner: str
    role: Role
    sha256: str

    def line(self) -> str:
        return f"{self.owner} {self.role} {self.sha256}\n"


def hash_key(key: str) -> str:
    """The hex SHA-256 that the keys file stores for ``key``."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def new_key() -> str:
    """A fresh key: 32 random bytes from ``secrets``, URL-safe, with a recognisable prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def check_owner(owner: str) -> str:
    if owner == ANONYMOUS:
        raise ConfigError(f"{ANONYMOUS!r} is the owner of requests without keys; pick another name")
    if not _OWNER.match(owner):
        raise ConfigError(
            f"owner {owner!r} is not a valid name: use 1-64 letters, digits, '.', '_', '@' or '-'"
        )
    return owner


def parse_keys(text: str, source: str = "keys file") -> list[KeyEntry]:
    """The entries of a keys file; ``#`` starts a comment. Raises ConfigError naming the line."""
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"{source} line {number}"
        if len(parts) != 3:
            raise ConfigError(f"{where}: expected 'OWNER ROLE SHA256', found {len(parts)} fields")
        owner, role, digest = parts
        try:
            check_owner(owner)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if role not in ROLES:
            raise ConfigError(f"{where}: role must be 'user' or 'admin', not {role!r}")
        if not _HEX64.match(digest):
            raise ConfigError(
                f"{where}: the third field must be the key's SHA-256 (64 lowercase hex digits);"
                " the file never holds a key itself: use dlaas keys add"
            )
        entries.append(KeyEntry(owner, "admin" if role == "admin" else "user", digest))
    return entries


def read_keys(path: Path) -> list[KeyEntry]:
    try:
        return parse_keys(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        raise ConfigError(
            f"API keys file {path} does not exist;"
            f" create it with dlaas keys add OWNER --file {path}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read API keys file {path}: {exc.strerror}") from None


def add_key(path: Path, owner: str, role: Role = "user") -> str:
    """Append a new key for ``owner``; return the key, which is stored nowhere else."""
    check_owner(owner)
    existing = read_keys(path) if path.exists() else []
    roles = {e.role for e in existing if e.owner == owner}
    if roles and role not in roles:
        raise ConfigError(
            f"{owner} already has {roles.pop()} keys; revoke them first to change the role"
        )
    key = new_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(KeyEntry(owner, role, hash_key(key)).line())
    return key


def revoke_owner(path: Path, owner: str) -> int:
    """Remove every key of ``owner``; return how many. Comments and other lines stay."""
    entries = read_keys(path)
    gone = sum(1 for e in entries if e.owner == owner)
    if not gone:
        return 0
    kept = []
    for raw in path.read_text(encoding="utf-8").splitlines(keepends=True):
        fields = raw.split("#", 1)[0].split()
        if fields and fields[0] == owner:
            continue
        kept.append(raw)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.writelines(kept)
    os.replace(tmp, path)  # readers see the old file or the new one, never half of it
    return gone


class KeyRing:
    """Who a presented key belongs to, from a keys file that may change while we serve.

    The file is stat-ed at most once per ``check_interval_s`` and re-read only when its
    size or mtime changed, so a lookup costs one SHA-256 and one dict lookup. A file
    that becomes invalid keeps the last good keys (the error is reported by ``on_error``).
    """

    def __init__(
        self,
        path: Path,
        *,
        check_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_reload: Callable[[int], None] | None = None,
        on_error: Callable[[ConfigError], None] | None = None,
    ) -> None:
        self.path = path
        self.check_interval_s = check_interval_s
        self.clock = clock
        self.on_reload = on_reload
        self.on_error = on_error
        self._by_hash: dict[str, KeyEntry] = {}
        self._signature: tuple[int, int] | None = None
        self._failed_signature: tuple[int, int] | None = (-1, -1)  # nothing reported yet
        self._checked_at = clock()
        self._load(raise_errors=True)

    def __len__(self) -> int:
        return len(self._by_hash)

    def lookup(self, key: str) -> KeyEntry | None:
        """The entry of ``key``, or None for an unknown key."""
        now = self.clock()
        if now - self._checked_at >= self.check_interval_s:
            self._checked_at = now
            self._load(raise_errors=False)
        digest = hash_key(key)
        entry = self._by_hash.get(digest)
        # The dict finds the candidate by digest; the final comparison is constant time.
        if entry is None or not hmac.compare_digest(entry.sha256, digest):
            return None
        return entry

    def _load(self, *, raise_errors: bool) -> None:
        signature: tuple[int, int] | None = None
        try:
            stat = self.path.stat()
            signature = (stat.st_mtime_ns, stat.st_size)
            if signature == self._signature:
                return
            entries = read_keys(self.path)
        except (OSError, ConfigError) as exc:
            error = exc if isinstance(exc, ConfigError) else ConfigError(str(exc))
            if raise_errors:
                raise error from None
            if signature != self._failed_signature and self.on_error is not None:
                self.on_error(error)  # once per bad version of the file, not every second
            self._failed_signature = signature
            return
        self._by_hash = {e.sha256: e for e in entries}
        self._signature = signature
        self._failed_signature = (-1, -1)
        if self.on_reload is not None:
            self.on_reload(len(self._by_hash))
