"""Signed documents have one spelling, network JSON has a depth and a size, keys stay out of reprs.

Security issue items 11 to 14: JCS writes 30 and 30.0 alike and 2**53 and 2**53 + 1 alike, so a
signed body holding such numbers would verify under many spellings.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ProtocolError
from gateway.protocol import seal_crypto as crypto
from gateway.protocol import seal_exchange as exchange
from gateway.protocol.canonical import MAX_SAFE_INTEGER, canonical_bytes
from gateway.protocol.signed import DocKind, encode_document, open_document, sign_body
from gateway.protocol.strict_json import MAX_DEPTH, MAX_JSON_BYTES, load_object, loads_strict

KEY = Ed25519PrivateKey.generate()
SAFE_INT = st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
SCALARS = st.none() | st.booleans() | SAFE_INT | st.text(max_size=8)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
BODIES = st.dictionaries(st.text(max_size=6), VALUES, max_size=5)
KINDS = st.sampled_from(list(DocKind))


def _strict(text: bytes) -> Any:
    return loads_strict(text, not_json="{}", duplicate="dup", constant="{}", integers_only=True)


@settings(max_examples=150)
@given(BODIES, KINDS)
def test_integer_bodies_round_trip_exactly(body: dict[str, Any], kind: DocKind) -> None:
    document = encode_document(kind, body, sign_body(KEY, kind, body))
    envelope = open_document(document, kind)
    assert envelope.body == body
    assert canonical_bytes(envelope.body) == canonical_bytes(body)
    assert json.dumps(envelope.body, sort_keys=True) == json.dumps(body, sort_keys=True)


@settings(max_examples=150)
@given(SAFE_INT, st.sampled_from(["{}.0", "{}e0", "{}E+0", "{}.000", "{}0e-1"]), KINDS)
def test_every_other_spelling_of_a_number_is_refused(n: int, form: str, kind: DocKind) -> None:
    body = {"n": n}
    document = encode_document(kind, body, sign_body(KEY, kind, body))
    respelled = document.replace(f'"n":{n}'.encode(), f'"n":{form.format(n)}'.encode())
    assert respelled != document
    with pytest.raises(ProtocolError):
        open_document(respelled, kind)


@given(st.integers(MAX_SAFE_INTEGER + 1, 2**80) | st.integers(-(2**80), -MAX_SAFE_INTEGER - 1))
def test_integers_beyond_2_53_are_refused_when_parsed_and_when_signed(n: int) -> None:
    with pytest.raises(ProtocolError):
        _strict(json.dumps({"n": n}).encode())
    with pytest.raises(ProtocolError):
        sign_body(KEY, DocKind.COMMAND, {"args": {"n": n}})


@given(st.floats(allow_nan=False, allow_infinity=False), KINDS)
def test_floats_are_never_signed(x: float, kind: DocKind) -> None:
    with pytest.raises(ProtocolError):
        sign_body(KEY, kind, {"args": [{"x": x}]})


def test_minus_zero_is_refused() -> None:
    with pytest.raises(ProtocolError):
        _strict(b'{"n": -0}')
    assert _strict(b'{"n": 0}') == {"n": 0}


@given(st.integers(1, 3 * MAX_DEPTH))
def test_depth_is_capped_before_parsing(depth: int) -> None:
    text = b'{"a":' + b"[" * (depth - 1) + b"0" + b"]" * (depth - 1) + b"}"
    if depth <= MAX_DEPTH:
        assert isinstance(load_object(text, "message"), dict)
    else:
        with pytest.raises(ProtocolError, match="nesting deeper"):
            load_object(text, "message")


def test_brackets_inside_strings_do_not_count_and_bombs_are_cheap() -> None:
    assert load_object(b'{"a": "' + b"[{" * 5000 + b'\\"]"}', "message")["a"].startswith("[{")
    with pytest.raises(ProtocolError, match="nesting deeper"):
        load_object(b"[" * 200_000, "message")
    with pytest.raises(ProtocolError, match="exceed"):
        load_object(b" " * (MAX_JSON_BYTES + 1), "message")


@given(st.binary(max_size=200))
def test_any_bytes_give_a_value_or_a_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        load_object(data, "message")


def test_keys_stay_out_of_reprs() -> None:
    header = bytes.fromhex(
        "0100112233445566778899aabbccddeeff6955b9006955d52003a1a2a3a4a5a6a7a8"
        "025ea10000000000015ea1000000000002"
    )
    k_tl = bytes(range(32))
    credential = exchange.TicketCredential(bytes.fromhex("5ea1000000000001"), header, k_tl)
    subkeys = (b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)
    for holder, secrets in ((credential, (k_tl,)), (crypto.LockKeys(*subkeys), subkeys)):
        text = repr(holder)
        for secret in secrets:
            assert repr(secret) not in text and secret.hex() not in text
