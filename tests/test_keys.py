"""The keys file: hashed lines only, add/list/revoke, and a lookup that follows the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dlaas.cli import main
from dlaas.errors import ConfigError
from dlaas.keys import KeyRing, add_key, hash_key, parse_keys, read_keys, revoke_owner


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_add_stores_only_the_hash_and_keys_are_long_and_distinct(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    alice = add_key(path, "alice")
    root = add_key(path, "root", "admin")
    text = path.read_text()
    assert alice not in text and root not in text
    assert hash_key(alice) in text and hash_key(root) in text
    assert len(alice.removeprefix("dlaas_")) >= 43  # 32 bytes, base64url
    assert alice != root
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert [(e.owner, e.role) for e in read_keys(path)] == [("alice", "user"), ("root", "admin")]


def test_revoke_removes_every_key_of_the_owner_and_keeps_comments(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# team keys\n")
    add_key(path, "alice")
    add_key(path, "alice")
    add_key(path, "bob")
    assert revoke_owner(path, "alice") == 2
    assert revoke_owner(path, "alice") == 0
    assert path.read_text().startswith("# team keys\n")
    assert [e.owner for e in read_keys(path)] == ["bob"]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("alice user", "expected 'OWNER ROLE SHA256'"),
        ("alice root " + "0" * 64, "role must be 'user' or 'admin'"),
        ("alice user dlaas_plaintextkey", "SHA-256"),
        ("anonymous user " + "0" * 64, "anonymous"),
        ("a/b user " + "0" * 64, "not a valid name"),
    ],
)
def test_bad_lines_are_refused_with_the_line_number(line: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="line 2") as info:
        parse_keys(f"# ok\n{line}\n")
    assert problem in str(info.value)


def test_a_role_change_needs_a_revoke_first(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    add_key(path, "alice")
    with pytest.raises(ConfigError, match="revoke"):
        add_key(path, "alice", "admin")


def test_keyring_follows_the_file_within_its_interval(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    alice = add_key(path, "alice")
    clock = Clock()
    errors: list[str] = []
    ring = KeyRing(
        path, check_interval_s=1.0, clock=clock, on_error=lambda e: errors.append(str(e))
    )
    entry = ring.lookup(alice)
    assert entry is not None and entry.owner == "alice"
    assert ring.lookup(alice + "x") is None

    # Given a new key and a revoked one, the ring sees both once the interval has passed.
    bob = add_key(path, "bob")
    revoke_owner(path, "alice")
    assert ring.lookup(bob) is None
    clock.now = 1.5
    assert ring.lookup(alice) is None
    bob_entry = ring.lookup(bob)
    assert bob_entry is not None and bob_entry.owner == "bob"

    # A file broken by hand keeps the last good keys, and says so once.
    path.write_text("bob user not-a-hash\n")
    for step in range(3):
        clock.now = 3.0 + step * 1.5
        assert ring.lookup(bob) is not None
    assert len(errors) == 1 and "SHA-256" in errors[0]


def test_keys_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "keys")
    assert main(["keys", "add", "alice", "--file", path]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("dlaas_") and key not in Path(path).read_text()
    assert main(["keys", "add", "ops", "--role", "admin", "--file", path]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--file", path]) == 0
    listing = capsys.readouterr().out
    assert "alice\tuser\t1 key" in listing and "ops\tadmin\t1 key" in listing
    assert key not in listing and hash_key(key) not in listing
    assert main(["keys", "revoke", "alice", "--file", path]) == 0
    assert main(["keys", "revoke", "alice", "--file", path]) == 2
    assert "alice has no keys" in capsys.readouterr().err
