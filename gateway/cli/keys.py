"""`stima keys`: the public keys the gateway accepts signed commands from (list, add, revoke),
and `stima keys generate` for a SCADA host or an operator to make its own key pair."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

from gateway.cli import add_common, emit, runtime_dir, table
from gateway.control import call


def _rt(args: argparse.Namespace) -> Path:

    return runtime_dir(args)


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")


def cmd_list(args: argparse.Namespace) -> int:

    rows = call(_rt(args), "keys.list")
    emit(
        args,
        rows,
        lambda rs: (
            table(
                [
                    (r["name"], r["role"], r["state"], _when(r["expires"]), r["public_key"][:16] + "…", r["added_by"])
                    for r in rs
                ],
                ["KEY", "ROLE", "STATE", "EXPIRES", "PUBLIC KEY", "ADDED BY"],
            )
            if rs
            else "the key book is empty: no Ed25519 key may sign commands"
        ),
    )
    return 0


def _expiry(text: str | None) -> float | None:
    if text is None:
        return None
    if text.endswith("d") and text[:-1].isdigit():
        return dt.datetime.now(dt.UTC).timestamp() + int(text[:-1]) * 86400.0
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(
            f"stima: --expires {text!r}: expected an ISO date (2027-06-30) or a number of days (90d)"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def cmd_add(args: argparse.Namespace) -> int:

    if (args.public_key is None) == (args.public_key_file is None):
        print("stima: give the public key with --public-key HEX or --public-key-file FILE", file=sys.stderr)
        return 2
    text = args.public_key if args.public_key is not None else Path(args.public_key_file).read_text()
    entry = call(_rt(args), "keys.add", name=args.name, public_key=text, role=args.role, expires=_expiry(args.expires))
    emit(
        args,
        entry,
        lambda e: (
            f"key {e['name']} added with role {e['role']}"
            + (f", valid until {_when(e['expires'])}" if e["expires"] else "")
        ),
    )
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:

    entry = call(_rt(args), "keys.revoke", name=args.name, reason=args.reason)
    emit(args, entry, lambda e: f"key {e['name']} revoked: commands it signs are refused")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """A new key pair on this machine: the private key to a file only its owner reads, the public
    key printed for `stima keys add` on the gateway."""
    from gateway.keys import generate_private_pem

    out = Path(args.out)
    if out.exists():
        print(f"stima: {out} exists; not overwritten", file=sys.stderr)
        return 2
    pem, public = generate_private_pem()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    print(public.hex())
    return 0


def register(sub: Any) -> None:

    keys = sub.add_parser("keys", help="public keys allowed to sign commands (Ed25519): list, add, revoke, generate")
    ks = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = ks.add_parser("list", help="every key with its role, state and expiry")
    add_common(p)
    p.set_defaults(func=cmd_list)
    p = ks.add_parser("add", help="trust a SCADA host's or an operator's public key with a role (engineer)")
    p.add_argument("name", metavar="NAME", help="the key's name, as signed commands give it in `key`")
    p.add_argument("--role", required=True, choices=["operator", "engineer"])
    p.add_argument("--public-key", help="64 hex digits")
    p.add_argument("--public-key-file", help="a file with the hex key or a PEM public key")
    p.add_argument("--expires", help="ISO date or time (UTC unless given), or a number of days such as 90d")
    add_common(p)
    p.set_defaults(func=cmd_add)
    p = ks.add_parser("revoke", help="stop trusting a key (engineer); recorded with the reason")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--reason", required=True)
    add_common(p)
    p.set_defaults(func=cmd_revoke)
    p = ks.add_parser("generate", help="make a key pair here: private key to --out (0600), public key printed")
    p.add_argument("--out", required=True, help="file for the private key (PKCS#8 PEM)")
    p.set_defaults(func=cmd_generate, json=False)
