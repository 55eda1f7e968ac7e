"""Signed documents: round trips, signatures, tampering, credential encryption, hostile input."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import AuthError, ConfigError, ProtocolError
from gateway.protocol import certs, command_doc, signed
from gateway.protocol import tickets as tk
from gateway.protocol.canonical import canonical_bytes
from gateway.protocol.seal_crypto import derive_ticket_key
from gateway.protocol.seal_frames import Operation, decode_ticket_header
from master_station.authority import MasterAuthority
from tests.fixtures.auth import GATEWAY_ID, LOCKS, OPERATOR, T0, World, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("tickets"))


@pytest.fixture(scope="module")
def ticket_doc(world: World) -> bytes:
    return tk.encode_ticket(world.ticket())


def _edit(doc: bytes, change: Any) -> bytes:
    obj = json.loads(doc)
    change(obj)
    return json.dumps(obj).encode()


# -- round trips ------------------------------------------------------------------------------


def test_ticket_round_trip_is_canonical(world: World, ticket_doc: bytes) -> None:
    ticket = tk.decode_ticket(ticket_doc, world.authority.public_key)
    assert tk.encode_ticket(ticket) == ticket_doc
    assert ticket_doc == canonical_bytes(json.loads(ticket_doc))
    assert ticket.gateway == GATEWAY_ID
    assert ticket.seal_ids == ("SL-0001", "SL-0002")
    assert ticket.lock_ops == {Operation.UNSEAL, Operation.SEAL}


def test_certificate_and_revocation_round_trip(world: World) -> None:
    doc = certs.encode_certificate(world.certificate)
    cert = certs.decode_certificate(doc, world.authority.public_key)
    assert cert == world.certificate
    assert certs.encode_certificate(cert) == doc
    revocations = world.revoke(tickets=["00" * 16], operators=["op-9"], certificates=["ab" * 8])
    doc = certs.encode_revocations(revocations)
    assert certs.decode_revocations(doc, world.authority.public_key) == revocations
    assert revocations.revokes_ticket("00" * 16)
    assert revocations.revokes_operator("op-9")
    assert revocations.revokes_certificate("ab" * 8)


def test_document_envelope_shape(ticket_doc: bytes) -> None:
    obj = json.loads(ticket_doc)
    assert set(obj) == {"v", "kind", "body", "sig"}
    assert obj["v"] == 1
    assert obj["kind"] == "ticket"
    assert len(signed.b64url_decode(obj["sig"], "sig")) == 64


# -- the ticket header and K_TL ---------------------------------------------------------------


def test_header_is_the_lock_projection_of_the_ticket(world: World) -> None:
    ticket = world.ticket(ops=["seal", "set_time", "read_log"])
    header = decode_ticket_header(tk.ticket_header(ticket))
    assert header.ticket_id.hex() == ticket.ticket_id
    assert (header.not_before, header.not_after) == (ticket.not_before, ticket.not_after)
    assert header.ops == {Operation.SEAL, Operation.SET_TIME}
    assert not header.audit
    assert header.operator == tk.operator_tag(OPERATOR)
    assert header.lock_ids == (LOCKS["SL-0001"], LOCKS["SL-0002"])
    assert len(tk.ticket_header(ticket)) == 35 + 8 * 2


def test_set_time_never_shares_a_ticket_with_unseal(world: World) -> None:
    # docs/protocol.md, section 7: a clock-setting ticket never opens a lock.
    with pytest.raises(ProtocolError):
        world.ticket(ops=["unseal", "set_time"])
    audit = world.ticket(flow="audit", role="district_manager", ops=["unseal"])
    assert decode_ticket_header(tk.ticket_header(audit)).audit


def test_operator_tag_is_stable_and_documented() -> None:
    # docs/authorization.md: SHA-256("sealgw/v1 operator-tag\0" || operator id)[:8]
    expected = hashlib.sha256(b"sealgw/v1 operator-tag\x00op-0042").digest()[:8]
    assert tk.operator_tag("op-0042") == expected
    assert tk.operator_tag("op-0042") != tk.operator_tag("op-0043")


def test_credentials_decrypt_to_the_lock_key_for_the_header(world: World) -> None:
    ticket = world.ticket()
    header = tk.ticket_header(ticket)
    for seal_id in ticket.seal_ids:
        credential = tk.open_credential(ticket, seal_id, world.credential_key)
        assert credential.header == header
        assert credential.lock_id == LOCKS[seal_id]
        assert credential.k_tl == derive_ticket_key(world.k_locks[seal_id], header)


def test_credential_for_another_gateway_key_is_refused(world: World) -> None:
    ticket = world.ticket()
    with pytest.raises(AuthError) as err:
        tk.open_credential(ticket, "SL-0001", X25519PrivateKey.generate())
    assert err.value.code == "wrong_recipient"


def test_credentials_are_bound_to_their_seal(world: World) -> None:
    ticket = world.ticket()
    first, second = ticket.seals
    swapped = replace(
        ticket,
        seals=(
            replace(first, nonce=second.nonce, sealed_key=second.sealed_key),
            replace(second, nonce=first.nonce, sealed_key=first.sealed_key),
        ),
    )
    with pytest.raises(AuthError) as err:
        tk.open_credential(swapped, "SL-0001", world.credential_key)
    assert err.value.code == "bad_credential"
    with pytest.raises(AuthError) as err:
        tk.open_credential(ticket, "SL-0003", world.credential_key)
    assert err.value.code == "wrong_lock"


def test_plaintext_key_never_in_the_document(world: World) -> None:
    ticket = world.ticket()
    doc = tk.encode_ticket(ticket)
    k_tl = tk.open_credential(ticket, "SL-0001", world.credential_key).k_tl
    assert k_tl not in doc
    assert signed.b64url(k_tl).encode() not in doc
    assert k_tl.hex().encode() not in doc


# -- signatures and tampering -----------------------------------------------------------------


def test_forged_signature_is_rejected(world: World, ticket_doc: bytes) -> None:
    body = json.loads(ticket_doc)["body"]
    rogue = Ed25519PrivateKey.generate()
    forged = signed.encode_document(
        signed.DocKind.TICKET, body, signed.sign_body(rogue, signed.DocKind.TICKET, body)
    )
    with pytest.raises(AuthError) as err:
        tk.decode_ticket(forged, world.authority.public_key)
    assert err.value.code == "bad_signature"


@pytest.mark.parametrize(
    "change",
    [
        lambda b: b.update(not_after=b["not_after"] + 3600),
        lambda b: b.update(not_before=b["not_before"] - 3600),
        lambda b: b.update(gateway="gw-0002"),
        lambda b: b.update(operator="op-0043"),
        lambda b: b.update(role="district_manager"),
        lambda b: b.update(flow="audit"),
        lambda b: b.update(ops=[*b["ops"], "read_log"]),
        lambda b: b.update(max_uses=b["max_uses"] + 1),
        lambda b: b["seals"][0].update(lock_id="5ea1000000000003"),
        lambda b: b["seals"].reverse(),
        lambda b: b.update(work_order="WO-2026-0002"),
    ],
)
def test_any_tampering_breaks_the_signature(world: World, ticket_doc: bytes, change: Any) -> None:
    doc = _edit(ticket_doc, lambda obj: change(obj["body"]))
    with pytest.raises(AuthError) as err:
        tk.decode_ticket(doc, world.authority.public_key)
    assert err.value.code == "bad_signature"


def test_signature_is_domain_separated_by_kind(world: World) -> None:
    body = certs.revocations_body(world.revoke())
    sig = signed.sign_body(world.authority._signing_key, signed.DocKind.TICKET, body)
    with pytest.raises(AuthError) as err:
        signed.verify_body(world.authority.public_key, signed.DocKind.REVOCATION_LIST, body, sig)
    assert err.value.code == "bad_signature"
    message = signed.signed_message(signed.DocKind.TICKET, body)
    assert message.startswith(b"sealgw/v1 ticket\x00{")


# -- malformed documents ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        lambda o: o.update(v=2),
        lambda o: o.update(v=1.0),
        lambda o: o.update(kind="operator_certificate"),
        lambda o: o.update(kind="firmware"),
        lambda o: o.update(extra=1),
        lambda o: o.pop("sig"),
        lambda o: o.update(sig=o["sig"] + "="),
        lambda o: o.update(sig=o["sig"][:-4]),
        lambda o: o["body"].update(extra="x"),
        lambda o: o["body"].pop("max_uses"),
        lambda o: o["body"].update(max_uses=0),
        lambda o: o["body"].update(max_uses=True),
        lambda o: o["body"].update(not_before=1.5),
        lambda o: o["body"].update(not_after=2**32),
        lambda o: o["body"].update(not_before=o["body"]["not_after"] + 1),
        lambda o: o["body"].update(ticket_id="ABCD" * 8),
        lambda o: o["body"].update(gateway="gw 1"),
        lambda o: o["body"].update(ops=[]),
        lambda o: o["body"].update(ops=["seal", "seal"]),
        lambda o: o["body"].update(seals=[]),
        lambda o: o["body"]["seals"].append(dict(o["body"]["seals"][0])),
        lambda o: o["body"]["seals"][1].update(lock_id=o["body"]["seals"][0]["lock_id"]),
        lambda o: o["body"]["seals"][0].update(lock_id="5ea10000000001"),
        lambda o: o["body"]["seals"][0].update(key="AAAA"),
        lambda o: o["body"]["enc"].update(alg="RSA"),
        lambda o: o["body"].update(enc="x"),
    ],
)
def test_malformed_ticket_is_a_protocol_error(world: World, ticket_doc: bytes, change: Any) -> None:
    doc = _edit(ticket_doc, change)
    with pytest.raises(ProtocolError):
        tk.decode_ticket(doc, world.authority.public_key)


@pytest.mark.parametrize(
    "doc",
    [
        b"",
        b"[]",
        b"not json",
        b'{"v":1,"kind":"ticket","body":{},"sig":"","v":1}',
        b'{"v":NaN,"kind":"ticket","body":{},"sig":""}',
        b"\xff\xfe",
        b"[" * 100_000,
        b'{"pad":"' + b"x" * (70 * 1024) + b'"}',
    ],
)
def test_hostile_bytes_are_protocol_errors(world: World, doc: bytes) -> None:
    with pytest.raises(ProtocolError):
        tk.decode_ticket(doc, world.authority.public_key)


def test_certificate_name_must_be_printable_unicode(world: World) -> None:
    doc = certs.encode_certificate(world.certificate)
    bad = _edit(doc, lambda o: o["body"].update(name="\ud800"))
    with pytest.raises(ProtocolError):
        certs.decode_certificate(bad, world.authority.public_key)


# -- fuzzing ----------------------------------------------------------------------------------

_DECODERS = (tk.decode_ticket, certs.decode_certificate, certs.decode_revocations)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=300), which=st.sampled_from(_DECODERS))
def test_fuzz_random_bytes(world: World, data: bytes, which: Any) -> None:
    with pytest.raises((ProtocolError, AuthError)):
        which(data, world.authority.public_key)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=_json, kind=st.sampled_from([k.value for k in signed.DocKind]))
def test_fuzz_random_bodies(world: World, body: Any, kind: str) -> None:
    doc = json.dumps({"v": 1, "kind": kind, "body": body, "sig": "A" * 86}).encode()
    decoder = {
        "ticket": tk.decode_ticket,
        "operator_certificate": certs.decode_certificate,
        "revocation_list": certs.decode_revocations,
        "command": command_doc.decode_command,
    }[kind]
    with pytest.raises((ProtocolError, AuthError)):
        decoder(doc, world.authority.public_key)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzz_mutated_ticket(world: World, ticket_doc: bytes, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(ticket_doc) - 1))
    length = data.draw(st.integers(0, 8))
    patch = data.draw(st.binary(max_size=8))
    doc = ticket_doc[:start] + patch + ticket_doc[start + length :]
    try:
        ticket = tk.decode_ticket(doc, world.authority.public_key)
    except (ProtocolError, AuthError):
        return
    assert tk.encode_ticket(ticket) == ticket_doc  # only a no-op edit may still verify


# -- the master authority's files -------------------------------------------------------------


def test_authority_secrets_are_private_files(world: World) -> None:
    directory = world.authority.directory
    key_files = [directory / "ms_signing.key", *(directory / "locks").glob("*.key")]
    assert len(key_files) == 1 + len(LOCKS)
    for path in key_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reopened = MasterAuthority.open(directory)
    assert reopened.public_key_bytes == world.authority.public_key_bytes
    assert reopened.lock_key(LOCKS["SL-0002"]) == world.k_locks["SL-0002"]


def test_authority_refuses_a_readable_key(tmp_path: Path) -> None:
    authority = MasterAuthority.create(tmp_path / "ms")
    os.chmod(authority.directory / "ms_signing.key", 0o644)
    with pytest.raises(ConfigError):
        MasterAuthority.open(authority.directory)


def test_revocation_serials_grow_and_accumulate(tmp_path: Path) -> None:
    authority = MasterAuthority.create(tmp_path / "ms")
    first = authority.revoke(tickets=["11" * 16], issued_at=T0)
    second = authority.revoke(operators=["op-7"], issued_at=T0 + 1)
    assert (first.serial, second.serial) == (1, 2)
    assert second.tickets == ("11" * 16,)
    assert second.operators == ("op-7",)
    assert authority.last_revocations() == second


# -- docs/authorization.md, section 9: the test vector ----------------------------------------

VECTOR_DOC = (
    b'{"body":{"enc":{"alg":"X25519-HKDF-SHA256-A256GCM",'
    b'"ephemeral":"eaYx7t4b-cmPEgMs3q3Q56B5OY_HhriMyEbsia-FpRo",'
    b'"recipient":"NYBy1jZYgNGu6jKa35EhODhR7SGijjt16WXQ0s0WYlQ"},"flow":"meter_replace",'
    b'"gateway":"gw-0001","issued_at":1767222000,"max_uses":4,"not_after":1767232800,'
    b'"not_before":1767225600,"operator":"op-0042","ops":["unseal","seal","read_state"],'
    b'"role":"meter_installer","seals":[{"key":"-yFTTNLcxxB08U9a1KPKA_zIcvENgqYYfMP1eCIG-TH9Gv_'
    b'bKpzGWU8xasojw9nR","lock_id":"5ea1000000000001","nonce":"oKGio6Slpqeoqaqr",'
    b'"seal_id":"SL-0001"}],"ticket_id":"00112233445566778899aabbccddeeff",'
    b'"work_order":"WO-2026-0001"},"kind":"ticket","sig":"SR_SADP9a4StpPIS9mYVuzf2kEvpf_GaNObu'
    b'xqHRyv5F_E53VGAsDSoS3XGsUsqf24AdFVF_AY9uXnX8VdKPBQ","v":1}'
)
VECTOR_HEADER = bytes.fromhex(
    "0100112233445566778899aabbccddeeff6955b9006955d52003f510680d4a68ff2b015ea1000000000001"
)
VECTOR_K_TL = bytes.fromhex("cf58a2b50d1ff3a1ec170d3a8fad964f465b370252aa5134caf3bd3feaa3cf31")


def test_known_answer_vector() -> None:
    master = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    gateway = X25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    ephemeral = X25519PrivateKey.from_private_bytes(bytes(range(64, 96)))
    k_lock, lock_id = bytes(range(32)), bytes.fromhex("5ea1000000000001")
    draft = tk.Ticket(
        ticket_id="00112233445566778899aabbccddeeff",
        work_order="WO-2026-0001",
        flow="meter_replace",
        operator="op-0042",
        role="meter_installer",
        gateway="gw-0001",
        ops=("unseal", "seal", "read_state"),
        not_before=1767225600,
        not_after=1767232800,
        max_uses=4,
        issued_at=1767222000,
        recipient=tk.x25519_public_bytes(gateway),
        ephemeral=tk.x25519_public_bytes(ephemeral),
        seals=(tk.SealGrant("SL-0001", lock_id, bytes(12), bytes(48)),),
    )
    assert tk.ticket_header(draft) == VECTOR_HEADER
    assert derive_ticket_key(k_lock, VECTOR_HEADER) == VECTOR_K_TL
    grant = tk.encrypt_credential(
        ephemeral,
        draft.recipient,
        ticket_id=draft.ticket_id,
        seal_id="SL-0001",
        lock_id=lock_id,
        k_tl=VECTOR_K_TL,
        nonce=bytes(range(0xA0, 0xAC)),
    )
    signed_ticket = tk.sign_ticket(master, replace(draft, seals=(grant,)))
    assert tk.encode_ticket(signed_ticket) == VECTOR_DOC
    decoded = tk.decode_ticket(VECTOR_DOC, master.public_key())
    assert tk.open_credential(decoded, "SL-0001", gateway).k_tl == VECTOR_K_TL
