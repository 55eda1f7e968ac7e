"""Security item 15: the pairing code is a SPAKE2 password, not an HMAC key.

Protocol version 1 bound the code into the handheld's proof with an HMAC keyed by an X25519
secret and the code. A gateway impersonator holds its own X25519 secret, so from one recorded
pairing run it could test every code offline. Version 2 (docs/handheld.md, section 4) runs
SPAKE2 with the code as password: the impersonator's recorded run lets it check only the one
guess it committed to online, and the real gateway counts every wrong code against the
code's attempts. The codes of these tests are drawn from 10^4 values so that the old attack
finishes in well under a second; the new one is swept over a window of 10^3 codes that holds
the right one (each SPAKE2 guess costs a pure-Python scalar multiplication).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from spake2 import SPAKE2_B
from spake2.ed25519_basic import L, bytes_to_element
from spake2.parameters.ed25519 import ParamsEd25519

from firmware_sim.handheld.client import HandheldRefusedError
from gateway.handheld.transport import FrameStream, HandheldServer
from gateway.protocol.canonical import canonical_bytes
from gateway.protocol.certs import parse_certificate
from gateway.protocol.handheld import PairChallenge, PairHello, PairProof, Refusal
from gateway.protocol.handheld_crypto import (
    ed25519_public_bytes,
    pairing_transcript,
    pake_password,
)
from gateway.protocol.signed import b64url
from tests.fixtures.auth import OPERATOR
from tests.fixtures.handheld import Bench, start_bench

D = b"sealgw/v1 handheld "
CODE_SPACE = 10**4
NEW_WINDOW = 10**3
ID_A, ID_B = D + b"handheld", D + b"gateway"


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    started = await start_bench(tmp_path, max_attempts=3)
    yield started
    await started.server.stop()


def small_code() -> str:
    """An 8-digit code from the test's restricted space (0000xxxx)."""
    return f"{secrets.randbelow(CODE_SPACE):08d}"


# -- (a) version 1: the recorded run gives the code away --------------------------------------


@dataclass(frozen=True)
class V1Run:
    """What an impersonator of protocol version 1 holds after one pairing run."""

    th1: bytes
    th2: bytes
    shared: bytes
    mac: bytes


def v1_pairing_run(cert: str, device: Ed25519PrivateKey, code: str) -> V1Run:
    """A genuine v1 handheld pairs with an impersonator; the v1 derivation, frozen from 0.1.0."""
    e_h, e_g = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    rogue = Ed25519PrivateKey.generate()
    hello = {
        "v": 1,
        "type": "pair_hello",
        "cert": cert,
        "eph": b64url(e_h.public_key().public_bytes_raw()),
        "nonce": b64url(secrets.token_bytes(16)),
    }
    challenge = {
        "v": 1,
        "type": "pair_challenge",
        "gateway": "gw-rogue",
        "gw_key": b64url(ed25519_public_bytes(rogue)),
        "eph": b64url(e_g.public_key().public_bytes_raw()),
        "nonce": b64url(secrets.token_bytes(16)),
    }
    th1 = _t("pair 1", canonical_bytes(hello), canonical_bytes(challenge))
    sig_g = rogue.sign(D + b"pair gateway\x00" + th1)
    # the handheld's side of v1: Z, K_code = HKDF(Z || code, TH1), mac over TH2
    z_h = e_h.exchange(X25519PublicKey.from_public_bytes(e_g.public_key().public_bytes_raw()))
    th2 = _t("pair 2", th1, sig_g)
    mac = _mac(_hkdf(z_h + code.encode(), th1, D + b"pair code"), b"handheld", th2)
    # the impersonator keeps its own X25519 secret, hence Z
    z_g = e_g.exchange(X25519PublicKey.from_public_bytes(e_h.public_key().public_bytes_raw()))
    return V1Run(th1, th2, z_g, mac)


def crack_v1(run: V1Run, candidates: Iterable[str]) -> str | None:
    """The offline attack on version 1: recompute the handheld's MAC for every code."""
    for code in candidates:
        key = _hkdf(run.shared + code.encode(), run.th1, D + b"pair code")
        if hmac.compare_digest(_mac(key, b"handheld", run.th2), run.mac):
            return code
    return None


def test_v1_an_impersonator_recovers_the_code_offline(bench: Bench) -> None:
    code = small_code()
    run = v1_pairing_run(bench.handheld().identity.certificate, bench.world.handheld, code)
    assert crack_v1(run, (f"{n:08d}" for n in range(CODE_SPACE))) == code


# -- (a) version 2: the recorded run only answers the impersonator's own online guess ----------


@dataclass
class RogueGateway:
    """A gateway impersonator: its own identity, SPAKE2 side B with a guessed code, a recorder."""

    guess: str
    identity: Ed25519PrivateKey
    runs: list[tuple[PairHello, PairChallenge, PairProof, int]]

    async def handle(self, stream: FrameStream) -> None:
        hello = await stream.read()
        assert isinstance(hello, PairHello)
        spake = SPAKE2_B(pake_password(self.guess), idA=ID_A, idB=ID_B)
        draft = PairChallenge(
            "gw-rogue", ed25519_public_bytes(self.identity), spake.start(), bytes(16), b""
        )
        device_key = parse_certificate(hello.certificate).device_key  # certificates are public
        th1 = pairing_transcript(hello, draft, device_key)
        sig = self.identity.sign(D + b"pair gateway\x00" + th1)
        challenge = PairChallenge(draft.gateway, draft.gateway_key, draft.pake, draft.nonce, sig)
        await stream.write(challenge)
        proof = await stream.read()
        assert isinstance(proof, PairProof)
        self.runs.append((hello, challenge, proof, spake.xy_scalar))
        await stream.write(Refusal("bad_code", "recorded"))


async def record_v2_run(bench: Bench, code: str, guess: str) -> RogueGateway:
    """A genuine v2 handheld, given `code`, pairs with a rogue that guessed `guess`."""
    rogue = RogueGateway(guess, Ed25519PrivateKey.generate(), [])
    server = HandheldServer("tcp:127.0.0.1:0", rogue.handle)
    await server.start()
    try:
        with pytest.raises(HandheldRefusedError):
            await bench.handheld().pair(str(server.address), code)
    finally:
        await server.stop()
    assert len(rogue.runs) == 1
    return rogue


def crack_v2(rogue: RogueGateway, candidates: Iterable[str]) -> str | None:
    """The same offline attack on version 2, as strong as the impersonator can make it.

    It knows its SPAKE2 scalar y, both SPAKE2 messages and the whole transcript; for a code c
    it computes K_c = y·(X* - w_c·M), the SPAKE2 output and K_pair, and tests mac_H. The
    handheld's K is x·(Y* - w·N): equal only when c is the code *and* the rogue's guess was.
    """
    hello, challenge, proof, y = rogue.runs[0]
    params = ParamsEd25519
    big_x, big_y = hello.pake[1:], challenge.pake[1:]
    y_x = bytes_to_element(big_x).scalarmult(y)
    y_m = params.M.scalarmult(y)
    th1 = pairing_transcript(hello, challenge, parse_certificate(hello.certificate).device_key)
    th2 = _t("pair 2", th1, challenge.sig)
    for code in candidates:
        pw = pake_password(code)
        w = int.from_bytes(_hkdf(pw, b"", b"SPAKE2 pw", 48), "big") % L
        shared = y_x.add(y_m.scalarmult(-w)).to_bytes()
        k_spake = _h(_h(pw) + _h(ID_A) + _h(ID_B) + big_x + big_y + shared)
        k_pair = _hkdf(k_spake, th2, D + b"pair key")
        if hmac.compare_digest(_mac(k_pair, b"handheld", th2), proof.mac):
            return code
    return None


async def test_v2_an_impersonator_cannot_test_codes_offline(bench: Bench) -> None:
    code = small_code()
    guess = f"{(int(code) + CODE_SPACE // 2) % CODE_SPACE:08d}"  # its one online guess: wrong
    rogue = await record_v2_run(bench, code, guess)
    # the same attack that broke v1 (which found `code` above) finds nothing here
    start = min(int(code), CODE_SPACE - NEW_WINDOW) // NEW_WINDOW * NEW_WINDOW
    window = [f"{n:08d}" for n in range(start, start + NEW_WINDOW)]
    assert code in window and guess not in window
    found = await asyncio.to_thread(crack_v2, rogue, window)
    assert found is None
    # even told the right code, the transcript does not confirm it: it needs the handheld's x
    assert crack_v2(rogue, [code]) is None
    assert crack_v2(rogue, [guess]) is None
    # the v1 attack on the same kind of run succeeds (control)
    v1 = v1_pairing_run(bench.handheld().identity.certificate, bench.world.handheld, code)
    assert crack_v1(v1, window) == code


async def test_v2_an_impersonator_learns_only_whether_its_online_guess_was_right(
    bench: Bench,
) -> None:
    code = small_code()
    rogue = await record_v2_run(bench, code, guess=code)  # lucky: 1 in 10^8 per pairing run
    around = [f"{(int(code) + d) % CODE_SPACE:08d}" for d in range(-20, 21)]
    assert crack_v2(rogue, around) == code  # the attack is right; it just needs the guess online


# -- (b) a wrong code is refused with a reason and counts an attempt --------------------------


async def test_each_wrong_code_costs_one_counted_online_attempt(bench: Bench) -> None:
    issued = await bench.service.issue_pairing_code()
    wrong = f"{(int(issued.code) + 1) % 10**8:08d}"
    details = []
    for _ in range(3):
        with pytest.raises(HandheldRefusedError) as info:
            await bench.handheld().pair(bench.address, wrong)
        assert info.value.code == "bad_code"
        details.append(bench.events_of("handheld.pairing_failed")[-1].data["detail"])
    assert details == ["2 attempts left", "1 attempts left", "0 attempts left"]
    with pytest.raises(HandheldRefusedError) as info:  # the code is burnt, the right one too
        await bench.handheld().pair(bench.address, issued.code)
    assert info.value.code == "too_many_attempts"
    assert bench.reasons("handheld.pairing_failed") == ["bad_code"] * 3 + ["too_many_attempts"]
    assert bench.store.devices() == ()


async def test_a_handheld_side_guesser_gets_no_code_keyed_answer_before_its_mac(
    bench: Bench,
) -> None:
    """The gateway's challenge carries no MAC: a guesser on the handheld side has nothing to
    test offline, so it has to send a proof, and that is counted."""
    issued = await bench.service.issue_pairing_code()
    challenge = await _challenge_only(bench)
    assert set(challenge.__slots__) == {"gateway", "gateway_key", "pake", "nonce", "sig"}
    await bench.handheld().pair(bench.address, issued.code)  # walking away cost no attempt
    assert len(bench.store.devices()) == 1


# -- (c) the right code pairs, and sessions work end to end -----------------------------------


async def test_the_right_code_pairs_and_sessions_work_end_to_end(bench: Bench) -> None:
    issued = await bench.service.issue_pairing_code()
    handheld = bench.handheld()
    gateway = await handheld.pair(bench.address, issued.code)
    assert gateway.gateway_key == ed25519_public_bytes(bench.identity)
    async with await handheld.open_session(bench.address) as session:
        assert session.operator == OPERATOR
        seal = bench.world.ticket().seals[0].seal_id
        operation = await session.unseal(seal, bench.world.ticket().work_order)
        assert operation["status"] == "pending"
        assert (await session.result(operation["op_id"]))["status"] == "done"
    assert [r.seal_id for r in bench.backend.executed] == [seal]
    assert bench.events_of("handheld.paired")[0].subject == OPERATOR


# -- helpers ----------------------------------------------------------------------------------


async def _challenge_only(bench: Bench) -> PairChallenge:
    from gateway.handheld.transport import connect
    from gateway.protocol.handheld_crypto import HandheldPairing

    stream = await connect(bench.address)
    try:
        pairing = HandheldPairing(
            bench.handheld().identity.certificate, bench.world.handheld, "00000000"
        )
        await stream.write(pairing.hello())
        challenge = await stream.read()
    finally:
        await stream.close()
    assert isinstance(challenge, PairChallenge)
    return challenge


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(hashes.SHA256(), length, salt, info).derive(ikm)


def _t(label: str, *parts: bytes) -> bytes:
    data = D + label.encode("ascii") + b"\x00"
    for part in parts:
        data += len(part).to_bytes(4, "big") + part
    return _h(data)


def _mac(key: bytes, who: bytes, data: bytes) -> bytes:
    return hmac.new(key, D + who + b"\x00" + data, hashlib.sha256).digest()
