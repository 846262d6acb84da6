"""Protection settings as files: export the running settings, compare a file with them, check a
file against the site before a reload. Pure functions; the command reads and writes.

A settings file is TOML with the site file's own `[[protection]]` tables (a whole site file is
accepted too: its protection tables are read). Every scheme is written out in full, defaults
included, so that the file says what the relay does. The digest is a SHA-256 over the
validated settings (not the file's text): reformatting or reordering a file keeps it, any
change of a value changes it, so a reviewer can sign off a digest and the engineer can show
that the file reloaded is the one signed off.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from gateway.protection.settings import ProtectionScheme

MAX_FILE_BYTES = 5_000_000


class SettingsFileError(ValueError):
    """A settings file that cannot be used; `problems` lists every reason with its key path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def dump(scheme: ProtectionScheme) -> dict[str, Any]:
    """The scheme as its table in a site file, every value explicit."""
    return scheme.model_dump(mode="json", by_alias=True, exclude_none=True)


def digest(schemes: Iterable[ProtectionScheme]) -> str:
    canonical = json.dumps(
        sorted((dump(s) for s in schemes), key=lambda d: d["breaker"]), sort_keys=True, separators=(",", ":")
    )
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def export_text(schemes: Iterable[ProtectionScheme], heading: str) -> str:
    """A settings file: a comment heading (where from, when, the digest), then the tables."""
    schemes = list(schemes)
    lines = [f"# {line}" for line in heading.splitlines()]
    lines.append(f"# settings digest {digest(schemes)}")
    return "\n".join(lines) + "\n\n" + tomli_w.dumps({"protection": [dump(s) for s in schemes]})


def parse(text: str, source: str) -> list[ProtectionScheme]:
    """The schemes of a settings (or site) file; every problem named by its key path."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsFileError(source, [f"not valid TOML: {exc}"]) from None
    tables = data.get("protection")
    if not isinstance(tables, list) or not tables:
        raise SettingsFileError(source, ["no [[protection]] table (expected the site file's protection tables)"])
    schemes, problems = [], []
    for n, table in enumerate(tables):
        label = f"protection[{n}{':' + table['breaker'] if isinstance(table, dict) and 'breaker' in table else ''}]"
        try:
            schemes.append(ProtectionScheme.model_validate(table))
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                where = ".".join(str(p) for p in err["loc"])
                msg = err["msg"].removeprefix("Value error, ")
                found = (
                    ""
                    if err["type"] == "missing" or isinstance(err.get("input"), dict | list)
                    else f" (found {err.get('input')!r})"
                )
                problems.append(f"{label}{'.' + where if where else ''}: {msg}{found}")
    breakers = [s.breaker for s in schemes]
    problems += [
        f"protection: breaker {b} has more than one scheme" for b in sorted(set(breakers)) if breakers.count(b) > 1
    ]
    if problems:
        raise SettingsFileError(source, problems)
    return schemes


def read(path: Path) -> list[ProtectionScheme]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SettingsFileError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise SettingsFileError(str(path), [f"{len(raw)} bytes; a settings file is at most {MAX_FILE_BYTES}"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SettingsFileError(str(path), [f"not UTF-8 text (byte {exc.start})"]) from None
    return parse(text, str(path))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


@dataclass(frozen=True, slots=True)
class Change:
    breaker: str
    key: str
    """Dotted key path in the scheme's table ('' for a whole scheme)."""
    old: Any
    new: Any
    """None: absent on that side."""

    def as_dict(self) -> dict[str, Any]:
        return {"breaker": self.breaker, "key": self.key, "old": self.old, "new": self.new}


def diff(old: Iterable[ProtectionScheme], new: Iterable[ProtectionScheme]) -> list[Change]:
    """Every setting that differs, by breaker and key path; schemes only on one side whole."""
    before = {s.breaker: _flatten(dump(s)) for s in old}
    after = {s.breaker: _flatten(dump(s)) for s in new}
    changes = []
    for breaker in sorted(set(before) | set(after)):
        if breaker not in after:
            changes.append(Change(breaker, "", "scheme", None))
            continue
        if breaker not in before:
            changes.append(Change(breaker, "", None, "scheme"))
            continue
        a, b = before[breaker], after[breaker]
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                changes.append(Change(breaker, key, a.get(key), b.get(key)))
    return changes


def check_against_site(schemes: list[ProtectionScheme], site_data: dict[str, Any], source: str) -> list[str]:
    """Problems of loading the site with these schemes in place of its own (the reload's own
    checks: points read and written exist, breakers known), and of building the protection
    core from them on every backend there is."""
    from gateway.config import ConfigError, validate
    from gateway.protection.core import CoreError
    from gateway.protection.engine import ProtectionEngine

    problems: list[str] = []
    candidate = dict(site_data)
    candidate["protection"] = [dump(s) for s in schemes]
    try:
        validate(candidate, source)
    except ConfigError as exc:
        problems += [str(p) for p in exc.problems]
    for backend in ("native", "reference"):
        try:
            ProtectionEngine(schemes, backend=backend)
        except RuntimeError as exc:
            if backend == "native" and "not built" in str(exc):
                continue
            problems.append(f"the {backend} protection core refuses these settings: {exc}")
        except (CoreError, ValueError) as exc:
            problems.append(f"the {backend} protection core refuses these settings: {exc}")
    return problems
