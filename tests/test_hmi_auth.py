"""The HMI's users file, password hashes, sessions and login limits (sans-IO parts)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.hmi import users
from gateway.hmi.security import LoginLimiter, SessionBook, same_token
from gateway.switching.model import Role

ROOT = Path(__file__).resolve().parents[1]


def test_password_hash_verifies_only_the_right_password() -> None:
    stored = users.hash_password("correct horse battery", log2_n=10)
    assert stored.startswith("scrypt$10$8$1$")
    assert users.verify_password(stored, "correct horse battery")
    assert not users.verify_password(stored, "correct horse batterz")
    assert not users.verify_password(stored, "")
    # two hashes of one password differ (random salt)
    assert stored != users.hash_password("correct horse battery", log2_n=10)


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=120))
def test_malformed_hashes_never_verify_and_never_raise(text: str) -> None:
    assert users.verify_password(text, "whatever password") is False


def test_users_file_round_trip_and_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "hmi-users"
    ada = users.User("ada", Role.OPERATOR, users.hash_password("a long password", log2_n=10))
    users.save(path, {"ada": ada}, group=None)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert users.load(path) == {"ada": ada}
    with pytest.raises(users.UsersFileError, match=r"hmi-users:3: role must be viewer"):
        users.parse("# c\n\nbob:admin:" + ada.password_hash + "\n", str(path))
    with pytest.raises(users.UsersFileError, match=r":1: expected name:role:hash"):
        users.parse("bob operator\n", "f")
    with pytest.raises(users.UsersFileError, match=r":1: the password hash is not an scrypt hash"):
        users.parse("bob:operator:plaintext\n", "f")
    with pytest.raises(users.UsersFileError, match="listed twice"):
        users.parse(f"bob:viewer:{ada.password_hash}\nbob:viewer:{ada.password_hash}\n", "f")


def test_a_users_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hmi-users"
    users.save(path, {}, group=None)
    os.chmod(path, 0o644)
    with pytest.raises(users.UsersFileError, match="accessible by others"):
        users.load(path)
    os.chmod(path, 0o660)
    with pytest.raises(users.UsersFileError, match="writable by its group"):
        users.load(path)
    os.chmod(path, 0o640)
    assert users.load(path) == {}
    with pytest.raises(users.UsersFileError, match="does not exist: create the first user"):
        users.load(tmp_path / "missing")


def test_cli_adds_lists_and_removes_users_with_no_default_password(tmp_path: Path) -> None:
    path = tmp_path / "hmi-users"

    def stima(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", "hmi", "user", *argv, "--users-file", str(path)],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )

    short = stima("add", "ada", "--role", "operator", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 10 characters" in short.stderr
    no_tty = stima("add", "ada", "--role", "operator")  # no terminal, no --password-stdin: nothing made up
    assert no_tty.returncode == 2 and "--password-stdin" in no_tty.stderr
    assert not path.exists()
    assert stima("add", "ada", "--role", "operator", "--password-stdin", stdin="tea at four o'clock\n").returncode == 0
    assert stima("add", "bob", "--role", "viewer", "--password-stdin", stdin="a viewer's password\n").returncode == 0
    again = stima("add", "ada", "--role", "engineer", "--password-stdin", stdin="another password\n")
    assert again.returncode == 2 and "exists" in again.stderr
    listed = stima("list")
    assert listed.stdout.split() == ["ada", "operator", "bob", "viewer"]
    found = users.load(path)
    assert users.verify_password(found["ada"].password_hash, "tea at four o'clock")
    assert stima("remove", "bob").returncode == 0
    assert set(users.load(path)) == {"ada"}


def test_sessions_expire_when_idle_and_at_their_lifetime() -> None:
    book = SessionBook(idle_s=900.0, max_s=3600.0)
    s = book.create("ada", Role.OPERATOR, 0.0)
    assert book.get(s.id, 899.0) is s  # used: idle time restarts
    assert book.get(s.id, 899.0 + 899.0) is s
    assert book.get(s.id, 899.0 + 899.0 + 900.0) is None  # idle 900 s: ended
    assert book.get(s.id, 1.0) is None  # and gone for good
    busy = book.create("ada", Role.OPERATOR, 0.0)
    for t in range(0, 3600, 600):
        assert book.get(busy.id, float(t)) is busy
    assert book.get(busy.id, 3600.0) is None  # however busy, 1 h after login
    assert book.get("not-a-session", 0.0) is None and book.get(None, 0.0) is None


def test_ending_a_users_sessions() -> None:
    book = SessionBook(idle_s=60.0, max_s=600.0)
    a1, a2, b = (book.create(u, Role.VIEWER, 0.0) for u in ("ada", "ada", "bob"))
    assert book.end_user("ada") == 2
    assert book.get(a1.id, 1.0) is None and book.get(a2.id, 1.0) is None and book.get(b.id, 1.0) is b


def test_csrf_tokens_compare_exactly() -> None:
    assert same_token("abc", "abc")
    assert not same_token("abc", "abd") and not same_token("abc", None) and not same_token("abc", "")
    assert not same_token("", "")


def test_login_limiter_blocks_an_address_and_a_user_for_the_window() -> None:
    limiter = LoginLimiter(failures=3, window_s=60.0)
    for t in (0.0, 1.0, 2.0):
        assert limiter.retry_after("10.0.0.1", "ada", t) == 0.0
        limiter.failed("10.0.0.1", "ada", t)
    assert limiter.retry_after("10.0.0.1", "ada", 3.0) == pytest.approx(57.0)
    assert limiter.retry_after("10.0.0.1", "someone", 3.0) == pytest.approx(57.0)  # the address
    assert limiter.retry_after("10.0.0.2", "ADA", 3.0) == pytest.approx(57.0)  # the user, any case
    assert limiter.retry_after("10.0.0.2", "bob", 3.0) == 0.0
    assert limiter.retry_after("10.0.0.1", "ada", 59.0) == pytest.approx(1.0)
    assert limiter.retry_after("10.0.0.1", "ada", 60.0) == 0.0  # the first failure slid out


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(min_value=0.0, max_value=1.0)), max_size=40))
def test_login_limiter_never_allows_more_failures_than_the_limit_in_a_window(attempts: list[tuple[str, float]]) -> None:
    limiter = LoginLimiter(failures=3, window_s=10.0)
    now, tried = 0.0, []
    for address, step in attempts:
        now += step
        if limiter.retry_after(address, "ada", now) == 0.0:
            limiter.failed(address, "ada", now)
            tried.append(now)
    for i, t in enumerate(tried):
        assert sum(1 for u in tried[i:] if u < t + 10.0) <= 3
