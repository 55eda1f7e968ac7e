"""docs/handheld.md, section 4.3: the pairing key schedule, pinned as a deterministic vector.

No published SPAKE2 vectors exist for the python-spake2 variant (its M and N, its
password-to-scalar and its final hash are its own), so the vector is ours: fixed keys, nonces,
SPAKE2 scalars and code, run through the real HandheldPairing and GatewayPairing. Three checks:
the code reproduces the doc's block line for line; an independent derivation written from the
doc's formulas (hashlib, hmac, HKDF and the bare Ed25519 group) gives the same values; and the
last keys are pinned here too, so a change to the doc and the code together is still caught.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from spake2.ed25519_basic import L, bytes_to_element
from spake2.parameters.ed25519 import ParamsEd25519

from gateway.protocol.canonical import canonical_bytes
from gateway.protocol.certs import OperatorCertificate, encode_certificate, sign_certificate
from gateway.protocol.handheld import PairDone, message_fields
from gateway.protocol.handheld_crypto import (
    GatewayPairing,
    HandheldPairing,
    ed25519_public_bytes,
    pake_password,
)

DOC = Path(__file__).resolve().parents[3] / "docs" / "handheld.md"
D = b"sealgw/v1 handheld "
CODE = "12345678"
GATEWAY_ID = "gw-district-1-01"
PAIRED_AT = 1767229200
N_H, N_G = bytes(range(0xA0, 0xB0)), bytes(range(0xB0, 0xC0))
X_ENTROPY, Y_ENTROPY = bytes(range(0x00, 0x40)), bytes(range(0x40, 0x80))
MS_SEED, DEVICE_SEED, GATEWAY_SEED = b"\x33" * 32, b"\x11" * 32, b"\x22" * 32
Block = list[tuple[str, str]]

# the last steps, pinned here as well as in the doc
PINNED = {
    "K_spake": "6ab4e28ec362c28a6d1856d631a2e3fd4975c42378453ed9606f3d081e4124dd",
    "K_pair": "fdc63e152b7b8cc88d4b365fd6a9b41aa754bc6e46f832dba3bbfca05416f89f",
    "mac_H": "0b541a857b43946cd898c7661bac1706ed987982aa892994ebc1550aead41083",
    "mac_G": "22a33d950c2c7b9b2a777936c9a863e8ea758d6a86d353d2d96b5030a2592251",
}


def vector_certificate() -> str:
    """The vector's operator certificate document (MS key from MS_SEED)."""
    device = Ed25519PrivateKey.from_private_bytes(DEVICE_SEED)
    cert = OperatorCertificate(
        serial="00000000000000c1",
        operator="op-1",
        name="Li Wei",
        roles=("meter_installer",),
        districts=("district-1",),
        device_key=ed25519_public_bytes(device),
        not_before=1767225600,
        not_after=1798761600,
        issued_at=1767225600,
    )
    signed = sign_certificate(Ed25519PrivateKey.from_private_bytes(MS_SEED), cert)
    return encode_certificate(signed).decode("utf-8")


def vector_block() -> Block:
    """Run the vector through the real pairing classes; every value the doc lists."""
    device = Ed25519PrivateKey.from_private_bytes(DEVICE_SEED)
    identity = Ed25519PrivateKey.from_private_bytes(GATEWAY_SEED)
    cert = vector_certificate()
    handheld = HandheldPairing(cert, device, CODE, random=_entropy(N_H, X_ENTROPY))
    gateway = GatewayPairing(
        identity,
        GATEWAY_ID,
        handheld.hello(),
        ed25519_public_bytes(device),
        CODE,
        random=_entropy(N_G, Y_ENTROPY),
    )
    challenge = gateway.challenge()
    proof = handheld.on_challenge(challenge)
    assert gateway.device_signed(proof, ed25519_public_bytes(device))
    assert gateway.code_matches(proof)
    done = gateway.done(proof, PAIRED_AT)
    handheld.on_done(done, proof)
    steps = derive(cert, handheld.hello().pake, challenge.pake, challenge.sig, proof.sig)
    assert steps["pake_H"] == handheld.hello().pake.hex()
    assert steps["pake_G"] == challenge.pake.hex()
    assert steps["sig_G"] == challenge.sig.hex()
    assert steps["mac_H"] == proof.mac.hex()
    assert steps["mac_G"] == done.mac.hex()
    assert steps["sig_H"] == proof.sig.hex()
    return list(steps.items())


def derive(cert: str, pake_h: bytes, pake_g: bytes, sig_g: bytes, sig_h: bytes) -> dict[str, str]:
    """The doc's formulas, written out without the gateway's pairing code."""
    params = ParamsEd25519
    pw = D + b"pair code\x00" + CODE.encode("ascii")
    w = int.from_bytes(_hkdf(pw, b"", b"SPAKE2 pw", 48), "big") % L
    x = int.from_bytes(X_ENTROPY, "big") % L
    y = int.from_bytes(Y_ENTROPY, "big") % L
    big_x = params.group.Base.scalarmult(x).add(params.M.scalarmult(w)).to_bytes()
    big_y = params.group.Base.scalarmult(y).add(params.N.scalarmult(w)).to_bytes()
    shared = bytes_to_element(big_y).add(params.N.scalarmult(-w)).scalarmult(x).to_bytes()
    id_a, id_b = D + b"handheld", D + b"gateway"
    h = hashlib.sha256
    k_spake = h(
        h(pw).digest() + h(id_a).digest() + h(id_b).digest() + big_x + big_y + shared
    ).digest()
    device_key = ed25519_public_bytes(Ed25519PrivateKey.from_private_bytes(DEVICE_SEED))
    gw_key = ed25519_public_bytes(Ed25519PrivateKey.from_private_bytes(GATEWAY_SEED))
    u_hello = canonical_bytes(
        {"v": 2, "type": "pair_hello", "cert": cert, "pake": _b64(b"A" + big_x), "nonce": _b64(N_H)}
    )
    u_challenge = canonical_bytes(
        {
            "v": 2,
            "type": "pair_challenge",
            "gateway": GATEWAY_ID,
            "gw_key": _b64(gw_key),
            "pake": _b64(b"B" + big_y),
            "nonce": _b64(N_G),
        }
    )
    th1 = _t("pair 1", u_hello, u_challenge, device_key, gw_key)
    th2 = _t("pair 2", th1, sig_g)
    k_pair = _hkdf(k_spake, th2, D + b"pair key", 32)
    mac_h = _mac(k_pair, b"handheld", th2)
    th3 = _t("pair 3", th2, sig_h, mac_h)
    mac_g = _mac(k_pair, b"gateway", th3 + PAIRED_AT.to_bytes(8, "big"))
    return {
        "pw": pw.hex(),
        "w": w.to_bytes(32, "little").hex(),
        "M": params.M.to_bytes().hex(),
        "N": params.N.to_bytes().hex(),
        "x": x.to_bytes(32, "little").hex(),
        "y": y.to_bytes(32, "little").hex(),
        "pake_H": (b"A" + big_x).hex(),
        "pake_G": (b"B" + big_y).hex(),
        "K": shared.hex(),
        "K_spake": k_spake.hex(),
        "device_key": device_key.hex(),
        "gw_key": gw_key.hex(),
        "SHA-256(cert)": h(cert.encode("utf-8")).hexdigest(),
        "SHA-256(U(hello))": h(u_hello).hexdigest(),
        "SHA-256(U(chal.))": h(u_challenge).hexdigest(),
        "TH1": th1.hex(),
        "sig_G": sig_g.hex(),
        "TH2": th2.hex(),
        "K_pair": k_pair.hex(),
        "sig_H": sig_h.hex(),
        "mac_H": mac_h.hex(),
        "TH3": th3.hex(),
        "mac_G": mac_g.hex(),
    }


def doc_block() -> Block:
    """The vector block of docs/handheld.md: `label  hex` lines, wrapped hex lines joined."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- pairing-vector -->\n```\n(.*?)```", text, re.S)
    assert match, "docs/handheld.md has no pairing vector block"
    block: Block = []
    for line in match.group(1).splitlines():
        label, value = line[:LABEL_WIDTH].strip(), line[LABEL_WIDTH:].strip()
        if label:
            block.append((label, value))
        else:
            block[-1] = (block[-1][0], block[-1][1] + value)
    return block


LABEL_WIDTH = 20
WRAP = 64


def render(block: Block) -> str:
    """The block in the doc's layout (to paste into docs/handheld.md)."""
    lines = []
    for label, value in block:
        chunks = [value[i : i + WRAP] for i in range(0, len(value), WRAP)] or [""]
        lines.append(f"{label:<{LABEL_WIDTH}}{chunks[0]}".rstrip())
        lines += [" " * LABEL_WIDTH + chunk for chunk in chunks[1:]]
    return "\n".join(lines) + "\n"


# -- tests ------------------------------------------------------------------------------------


def test_the_doc_vector_is_what_the_code_derives() -> None:
    assert doc_block() == vector_block()


def test_the_last_keys_are_pinned() -> None:
    values = dict(vector_block())
    assert {k: values[k] for k in PINNED} == PINNED


def test_the_vector_certificate_hash_is_in_the_doc() -> None:
    assert (
        dict(doc_block())["SHA-256(cert)"]
        == hashlib.sha256(vector_certificate().encode("utf-8")).hexdigest()
    )
    assert vector_certificate() in DOC.read_text(encoding="utf-8").replace("\n", "")


def test_one_wrong_digit_changes_every_key_after_the_spake2_output() -> None:
    device = Ed25519PrivateKey.from_private_bytes(DEVICE_SEED)
    handheld = HandheldPairing(
        vector_certificate(), device, "12345679", random=_entropy(N_H, X_ENTROPY)
    )
    gateway = GatewayPairing(
        Ed25519PrivateKey.from_private_bytes(GATEWAY_SEED),
        GATEWAY_ID,
        handheld.hello(),
        ed25519_public_bytes(device),
        CODE,
        random=_entropy(N_G, Y_ENTROPY),
    )
    proof = handheld.on_challenge(gateway.challenge())
    assert gateway.device_signed(proof, ed25519_public_bytes(device))  # signature still fine
    assert not gateway.code_matches(proof)
    assert proof.mac.hex() != PINNED["mac_H"]
    with pytest.raises(Exception, match="did not prove"):
        handheld.on_done(PairDone(PAIRED_AT, bytes.fromhex(PINNED["mac_G"])), proof)


def test_the_password_is_the_code_under_the_domain() -> None:
    assert pake_password(CODE) == b"sealgw/v1 handheld pair code\x00" + b"12345678"


def test_the_hello_carries_the_side_byte_and_the_element() -> None:
    fields = message_fields(HandheldPairing(vector_certificate(), _device(), CODE).hello())
    assert set(fields) == {"v", "type", "cert", "pake", "nonce"} and fields["v"] == 2


# -- helpers ----------------------------------------------------------------------------------


def _device() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(DEVICE_SEED)


def _entropy(*chunks: bytes) -> Callable[[int], bytes]:
    """A random source that hands out exactly these chunks, in order, and checks their sizes."""
    queue: Iterator[bytes] = iter(chunks)

    def take(n: int) -> bytes:
        chunk = next(queue)
        assert len(chunk) == n, f"asked for {n} bytes, the vector has {len(chunk)}"
        return chunk

    return take


def _hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt, info).derive(ikm)


def _t(label: str, *parts: bytes) -> bytes:
    data = D + label.encode("ascii") + b"\x00"
    for part in parts:
        data += len(part).to_bytes(4, "big") + part
    return hashlib.sha256(data).digest()


def _mac(key: bytes, who: bytes, data: bytes) -> bytes:
    return hmac.new(key, D + who + b"\x00" + data, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
