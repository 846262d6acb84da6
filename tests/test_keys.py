"""Ed25519 keys: the canonical form byte for byte (a known-answer vector, and a second encoder
written from the rules in docs/mqtt.md), signing and verifying, the key book (roles, expiry,
revocation, audit, snapshot), the gateway's own key pair on disk, and signed commands that carry
their key's role and name through the command service."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from gateway.commands import CommandService, MemoryNonces, Reason, Verifier, sign_command
from gateway.contract.settings import CommandsConfig
from gateway.keys import (
    KeyBook,
    KeyRefused,
    canonical,
    load_or_create_keypair,
    parse_public_key,
    public_bytes,
    sign,
    verify,
)
from gateway.switching.model import Role

SEED = bytes(range(32))
PRIVATE = Ed25519PrivateKey.from_private_bytes(SEED)
VECTOR_ENVELOPE: dict[str, Any] = {
    "id": "cmd-0001",
    "time": 1767225600.5,
    "nonce": "0123456789abcdef0123456789abcdef",
    "origin": "scada-nairobi-1",
    "command": "breaker/select",
    "substation": "SUB-003",
    "args": {
        "breaker": "CB-044",
        "action": "open",
        "reason": "Ω test",
        "override": ["parallel"],
        "n": 300,
        "neg": -2,
        "ok": True,
        "none": None,
    },
}
VECTOR_PUBLIC = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
VECTOR_CANONICAL = (
    "88a46172677388a6616374696f6ea46f70656ea7627265616b6572a643422d303434a16ecd012ca36e6567fea46e6f6e65c0a26f6bc3"
    "a86f7665727269646591a8706172616c6c656ca6726561736f6ea7cea92074657374a7636f6d6d616e64ae627265616b65722f73656c"
    "656374a26964a8636d642d30303031a36b6579af73636164612d6e6169726f62692d31a56e6f6e6365d920303132333435363738396162"
    "6364656630313233343536373839616263646566a66f726967696eaf73636164612d6e6169726f62692d31aa73756273746174696f6e"
    "a75355422d303033a474696d65cb41da556e40200000"
)
VECTOR_SIG = (
    "2fb2466d54e4815b1ad766d2ea91d7668b54cdaab7773c3d297d01d7cfd6c1ff"
    "c40469b51b66e3199be913111f9515ac127849dcbc6ec274830f4e30ff430c04"
)


def test_known_answer_vector() -> None:
    signed = sign(VECTOR_ENVELOPE, PRIVATE, "scada-nairobi-1")
    assert public_bytes(PRIVATE.public_key()).hex() == VECTOR_PUBLIC
    assert canonical(signed).hex() == VECTOR_CANONICAL
    assert signed["sig"].hex() == VECTOR_SIG
    assert verify(signed, bytes.fromhex(VECTOR_PUBLIC))["key"] == "scada-nairobi-1"


def _spec_encode(v: Any) -> bytes:
    """The canonical form from its written rules only (docs/mqtt.md), not from the msgpack package."""
    if v is None:
        return b"\xc0"
    if v is True or v is False:
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        if 0 <= v <= 0x7F:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack(">b", v)
        for lo, hi, head, fmt in (
            (0, 0xFF, 0xCC, ">B"),
            (0, 0xFFFF, 0xCD, ">H"),
            (0, 0xFFFFFFFF, 0xCE, ">I"),
            (0, 2**64 - 1, 0xCF, ">Q"),
            (-(2**7), 2**7 - 1, 0xD0, ">b"),
            (-(2**15), 2**15 - 1, 0xD1, ">h"),
            (-(2**31), 2**31 - 1, 0xD2, ">i"),
            (-(2**63), 2**63 - 1, 0xD3, ">q"),
        ):
            if lo <= v <= hi:
                return bytes([head]) + struct.pack(fmt, v)
        raise OverflowError
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        raw = v.encode("utf-8")
        n = len(raw)
        head = (
            bytes([0xA0 | n])
            if n < 32
            else (
                b"\xd9" + bytes([n])
                if n < 256
                else b"\xda" + struct.pack(">H", n)
                if n < 65536
                else b"\xdb" + struct.pack(">I", n)
            )
        )
        return head + raw
    if isinstance(v, bytes):
        n = len(v)
        return (
            b"\xc4" + bytes([n])
            if n < 256
            else b"\xc5" + struct.pack(">H", n)
            if n < 65536
            else b"\xc6" + struct.pack(">I", n)
        ) + v
    if isinstance(v, list):
        n = len(v)
        head = (
            bytes([0x90 | n])
            if n < 16
            else (b"\xdc" + struct.pack(">H", n) if n < 65536 else b"\xdd" + struct.pack(">I", n))
        )
        return head + b"".join(_spec_encode(x) for x in v)
    if isinstance(v, dict):
        n = len(v)
        head = (
            bytes([0x80 | n])
            if n < 16
            else (b"\xde" + struct.pack(">H", n) if n < 65536 else b"\xdf" + struct.pack(">I", n))
        )
        keys = sorted(v, key=lambda k: k.encode("utf-8"))
        return head + b"".join(_spec_encode(k) + _spec_encode(v[k]) for k in keys)
    raise TypeError(type(v))


_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=300)
    | st.binary(max_size=300)
)
_values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=40), inner, max_size=20),
    max_leaves=40,
)


@given(st.dictionaries(st.text(max_size=40), _values, max_size=12))
def test_the_written_rules_give_the_same_bytes(envelope: dict[str, Any]) -> None:
    envelope.pop("sig", None)
    assert canonical(envelope) == _spec_encode(envelope)


def test_tampering_another_key_or_a_missing_signature_is_refused() -> None:
    signed = sign({"id": "x", "args": {"a": 1}}, PRIVATE, "k1")
    altered = {**signed, "args": {"a": 2}}
    with pytest.raises(KeyRefused) as info:
        verify(altered, PRIVATE.public_key())
    assert info.value.reason == "bad_signature"
    with pytest.raises(KeyRefused, match="signature does not match"):
        verify(signed, Ed25519PrivateKey.generate().public_key())
    with pytest.raises(KeyRefused) as info:
        verify({k: v for k, v in signed.items() if k != "sig"}, PRIVATE.public_key())
    assert info.value.reason == "malformed"
    with pytest.raises(KeyRefused) as info:
        verify({**signed, "args": {1: "x"}}, PRIVATE.public_key())
    assert info.value.reason == "malformed"


def test_the_key_book_roles_expiry_revocation_audit_and_snapshot() -> None:
    book = KeyBook()
    book.add("scada-1", public_bytes(PRIVATE.public_key()), Role.OPERATOR, expires=None, who="local:eng", now=100.0)
    other = Ed25519PrivateKey.generate()
    book.add("eng-2", public_bytes(other.public_key()), Role.ENGINEER, expires=200.0, who="local:eng", now=100.0)
    fields, entry = book.verify(sign({"id": "a"}, PRIVATE, "scada-1"), 150.0)
    assert entry.role is Role.OPERATOR and fields["key"] == "scada-1"
    assert book.verify(sign({"id": "b"}, other, "eng-2"), 150.0)[1].role is Role.ENGINEER
    with pytest.raises(KeyRefused) as info:
        book.verify(sign({"id": "b"}, other, "eng-2"), 200.0)
    assert info.value.reason == "key_expired"
    with pytest.raises(KeyRefused) as info:
        book.verify(sign({"id": "c"}, other, "scada-1"), 150.0)  # signed by another key under this name
    assert info.value.reason == "bad_signature"
    with pytest.raises(KeyRefused) as info:
        book.verify(sign({"id": "c"}, PRIVATE, "nobody"), 150.0)
    assert info.value.reason == "unknown_key"
    book.revoke("scada-1", who="local:eng", reason="laptop stolen", now=160.0)
    with pytest.raises(KeyRefused) as info:
        book.verify(sign({"id": "d"}, PRIVATE, "scada-1"), 170.0)
    assert info.value.reason == "key_revoked" and "laptop stolen" in info.value.message
    with pytest.raises(ValueError, match="already"):
        book.add("eng-2", public_bytes(PRIVATE.public_key()), Role.OPERATOR, expires=None, who="x", now=170.0)
    with pytest.raises(ValueError, match="operator or engineer"):
        book.add("v", public_bytes(PRIVATE.public_key()), Role.VIEWER, expires=None, who="x", now=170.0)
    assert [k for k, _ in book.take_audit()] == ["keys.added", "keys.added", "keys.revoked"]
    again = KeyBook.restore(book.snapshot())
    assert [e.as_dict() for e in again.entries()] == [e.as_dict() for e in book.entries()]


def test_public_keys_as_hex_or_pem() -> None:
    from cryptography.hazmat.primitives import serialization

    pem = PRIVATE.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert parse_public_key(pem.decode()).hex() == VECTOR_PUBLIC == parse_public_key(VECTOR_PUBLIC).hex()
    with pytest.raises(ValueError, match="32 bytes"):
        parse_public_key("abcd")
    with pytest.raises(ValueError, match="64 hex digits"):
        parse_public_key("not a key")


def test_the_gateways_own_key_pair_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first = load_or_create_keypair(tmp_path / "state", "gw-SUB-003")
    assert (first.path.stat().st_mode & 0o777) == 0o600
    second = load_or_create_keypair(tmp_path / "state", "gw-SUB-003")
    assert first.public == second.public
    message = second.sign({"kind": "load_transfer.offer", "kw": 1200.0})
    assert verify(message, first.public)["key"] == "gw-SUB-003"
    first.path.chmod(0o644)
    with pytest.raises(ValueError, match="group or others"):
        load_or_create_keypair(tmp_path / "state", "gw-SUB-003")


def _service(book: KeyBook) -> tuple[CommandService, list[Any], list[Any]]:
    from tests.test_commands import NOW, SUB, BenchPlant, Rec

    rec = Rec()
    plant = BenchPlant(rec, 30.0)
    published: list[Any] = []
    svc = CommandService(
        CommandsConfig(enabled=True),
        key=None,
        keys=book,
        substation=SUB,
        nonces=MemoryNonces(),
        plant=plant,
        publish=lambda s, p: published.append((s, p)),
        audit=lambda *a: rec.events.append(a),
        wall=lambda: NOW,
        monotonic=lambda: rec.mono,
    )
    return svc, published, plant.operated


def test_a_signed_command_carries_its_keys_role_and_name() -> None:
    from tests.test_commands import NOW

    book = KeyBook()
    eng = Ed25519PrivateKey.generate()
    book.add("eng-1", public_bytes(eng.public_key()), Role.ENGINEER, expires=None, who="t", now=NOW - 10)
    svc, _published, _operated = _service(book)
    env = sign_command(eng, "breaker/select", {"breaker": "CB-044", "action": "open"}, "ncc", NOW, key_name="eng-1")
    result = svc.handle_mqtt("breaker/select", env)
    assert result["ok"] and result["key"] == "eng-1"
    held = svc.plant.b.authority.sbo.holder("CB-044", 100.0)  # type: ignore[attr-defined]
    assert held is not None and held.origin == "scada:ncc"
    entries = [e for e in svc.plant.b.authority.take_audit() if e.kind == "switching.selected"]  # type: ignore[attr-defined]
    assert entries[0].record["role"] == "engineer"
    # an HMAC envelope is malformed under the Ed25519 scheme
    hmac_env = sign_command(b"k" * 40, "breaker/cancel", {"select_id": "sel-1"}, "ncc", NOW)
    assert svc.handle_mqtt("breaker/cancel", hmac_env)["reason"] == "malformed"


def test_a_retained_command_is_refused_with_its_own_reason_and_never_carried_out() -> None:
    from tests.test_commands import NOW

    book = KeyBook()
    book.add("op-1", public_bytes(PRIVATE.public_key()), Role.OPERATOR, expires=None, who="t", now=NOW - 10)
    svc, published, operated = _service(book)
    env = sign_command(PRIVATE, "breaker/select", {"breaker": "CB-044", "action": "open"}, "ncc", NOW, key_name="op-1")
    result = svc.handle_mqtt("breaker/select", env, retained=True)
    assert result["ok"] is False and result["reason"] == Reason.RETAINED.value and "retain" in result["error"]
    assert operated == [] and svc.plant.b.authority.sbo.holder("CB-044", 100.0) is None  # type: ignore[attr-defined]
    assert published[-1][0] == "cmd_result/breaker/select"
    # the same envelope, not retained, is carried out (the retained copy did not use its nonce)
    assert svc.handle_mqtt("breaker/select", env)["ok"]


def test_a_device_that_does_not_exist_is_bad_args_not_an_interlock() -> None:
    from tests.test_commands import NOW

    book = KeyBook()
    book.add("op-1", public_bytes(PRIVATE.public_key()), Role.OPERATOR, expires=None, who="t", now=NOW - 10)
    svc, _p, _o = _service(book)
    env = sign_command(PRIVATE, "breaker/select", {"breaker": "CB-999", "action": "open"}, "ncc", NOW, key_name="op-1")
    result = svc.handle_mqtt("breaker/select", env)
    assert result["reason"] == "bad_args" and "CB-999" in result["error"] and "interlock" not in result


def test_verifier_needs_a_key_book_or_a_long_enough_secret() -> None:
    with pytest.raises(ValueError):
        Verifier(b"short", substation="S", max_age_s=30.0, nonces=MemoryNonces())
    assert Verifier(substation="S", max_age_s=30.0, nonces=MemoryNonces(), keys=KeyBook()).keys is not None
