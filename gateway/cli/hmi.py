"""`stima hmi user add|remove|passwd|list`: who may log in to the web HMI, with which role.

Offline commands on the users file (`[hmi] users_file` of the site file, or `--users-file`);
the running daemon reads the file again when it changes, and ends the sessions of a user
removed or given another role.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from gateway.cli import add_common, config_path
from gateway.hmi import users as users_mod
from gateway.switching.model import Role


def users_path(args: argparse.Namespace) -> Path:
    if args.users_file is not None:
        return Path(args.users_file)
    from gateway.config import load

    cfg = config_path(args)
    site = load(cfg)
    path = site.hmi.users_file
    return path if path.is_absolute() else cfg.parent / path


def _existing(path: Path) -> dict[str, users_mod.User]:
    if not path.exists():
        return {}
    return users_mod.load(path)


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise ValueError("no terminal to ask the password on: pass it on standard input with --password-stdin")
        password = getpass.getpass("new password: ")
        if getpass.getpass("again: ") != password:
            raise ValueError("the two passwords differ")
    return users_mod.check_password(password)


def _group(args: argparse.Namespace) -> str | None:
    return None if args.no_group else args.group


def cmd_add(args: argparse.Namespace) -> int:
    path = users_path(args)
    name = users_mod.check_name(args.name)
    role = Role.parse(args.role)
    found = _existing(path)
    if name in found and not args.replace:
        raise ValueError(f"user {name} exists in {path} (use `stima hmi user passwd` or --replace)")
    found[name] = users_mod.User(name, role, users_mod.hash_password(_read_password(args)))
    users_mod.save(path, found, _group(args))
    print(f"{name} ({role}) saved in {path}")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    path = users_path(args)
    found = _existing(path)
    if args.name not in found:
        raise ValueError(f"no user {args.name} in {path}")
    old = found[args.name]
    found[args.name] = users_mod.User(old.name, old.role, users_mod.hash_password(_read_password(args)))
    users_mod.save(path, found, _group(args))
    print(f"password of {args.name} changed in {path}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    path = users_path(args)
    found = _existing(path)
    if found.pop(args.name, None) is None:
        raise ValueError(f"no user {args.name} in {path}")
    users_mod.save(path, found, _group(args))
    print(f"{args.name} removed from {path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    path = users_path(args)
    found = _existing(path)
    if args.json:
        import json

        print(json.dumps([{"name": u.name, "role": u.role.label} for u in found.values()]))
    else:
        for u in sorted(found.values(), key=lambda u: u.name):
            print(f"{u.name:<24} {u.role.label}")
        if not found:
            print(f"no HMI users in {path}")
    return 0


def _run(fn: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except (ValueError, users_mod.UsersFileError, OSError) as exc:
            print(f"stima: {exc}", file=sys.stderr)
            return 2

    return wrapped


def register(sub: Any) -> None:

    hmi = sub.add_parser("hmi", help="the web HMI's users (name, role, password)")
    hmi_sub = hmi.add_subparsers(dest="hmi_command", required=True, metavar="WHAT")
    user = hmi_sub.add_parser("user", help="add, remove, list users or change a password")
    user_sub = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        add_common(p)
        p.add_argument(
            "--users-file", type=Path, default=None, help="the users file (default: [hmi] users_file of the site file)"
        )
        p.add_argument("--group", default="stima", help="group that may read the file (default: stima)")
        p.add_argument("--no-group", action="store_true", help="leave the file's group alone (mode 0600)")

    p = user_sub.add_parser("add", help="create a user (asks the password twice)")
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=["viewer", "operator", "engineer"])
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.add_argument("--replace", action="store_true", help="replace a user of that name")
    common(p)
    p.set_defaults(func=_run(cmd_add))
    p = user_sub.add_parser("passwd", help="change a user's password")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true")
    common(p)
    p.set_defaults(func=_run(cmd_passwd))
    p = user_sub.add_parser("remove", help="remove a user (their sessions end)")
    p.add_argument("name")
    common(p)
    p.set_defaults(func=_run(cmd_remove))
    p = user_sub.add_parser("list", help="users and roles")
    common(p)
    p.set_defaults(func=_run(cmd_list))
