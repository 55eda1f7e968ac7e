"""docs/protocol.md, section 11: every test vector in the doc is what the code produces.

`vector_blocks()` replays the section 11 scenario through the lock model (the firmware) and
the gateway codecs; the doc's code blocks are parsed (label, then hex, wrapped lines joined)
and must equal it, block by block. `render()` prints the blocks in the doc's layout.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from firmware_sim.locks.model import LockModel
from gateway.protocol import seal_crypto as crypto
from gateway.protocol import seal_exchange as ex
from gateway.protocol import seal_frames as sf
from gateway.protocol.clock import ManualClock
from gateway.protocol.seal_advert import advertising_data
from gateway.protocol.seal_fragments import fragment

DOC = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"
K_LOCK = bytes(range(32))
LOCK_1 = bytes.fromhex("5ea1000000000001")
LOCK_2 = bytes.fromhex("5ea1000000000002")
NOT_BEFORE, NOT_AFTER, RTC = 1767225600, 1767232800, 1767229200
OPERATOR = bytes.fromhex("a1a2a3a4a5a6a7a8")
LABEL_WIDTH = 21
WRAP = 70
Op = sf.Operation
Block = list[tuple[str, str]]


def _seq(start: int) -> bytes:
    return bytes(range(start, start + 16))


def _credential(
    ticket_id: str, ops: frozenset[sf.Operation], locks: tuple[bytes, ...]
) -> ex.TicketCredential:
    header = sf.encode_ticket_header(
        sf.TicketHeader(bytes.fromhex(ticket_id), NOT_BEFORE, NOT_AFTER, ops, OPERATOR, locks)
    )
    return ex.TicketCredential(LOCK_1, header, crypto.derive_ticket_key(K_LOCK, header))


def vector_blocks() -> list[Block]:
    """Every section 11 vector, computed, in the order and grouping of the doc."""
    nonces: Iterator[bytes] = iter([_seq(0x30), _seq(0x60), _seq(0x80)])
    clock = ManualClock(datetime.fromtimestamp(RTC, UTC))
    lock = LockModel(
        LOCK_1,
        K_LOCK,
        clock=clock,
        rng=lambda _n: next(nonces),
        state=sf.LockState.SEALED,
        wire_intact=True,
    )
    main = _credential(
        "00112233445566778899aabbccddeeff", frozenset({Op.UNSEAL, Op.SEAL}), (LOCK_1, LOCK_2)
    )
    clock_only = _credential(
        "ffeeddccbbaa99887766554433221100", frozenset({Op.SET_TIME}), (LOCK_1,)
    )
    keys = crypto.derive_lock_keys(K_LOCK, LOCK_1)
    blocks: list[Block] = [
        [("K_lock", K_LOCK.hex()), ("lock_id", LOCK_1.hex())],
        [
            ("header", main.header.hex()),
            ("SHA-256(hdr)", hashlib.sha256(main.header).hexdigest()),
            ("ticket_tag", crypto.ticket_tag(main.header).hex()),
            ("K_TL", main.k_tl.hex()),
            ("K_log", keys.log.hex()),
            ("K_adv", keys.advert.hex()),
            ("K_audit", keys.audit.hex()),
        ],
        _exchange(lock, main, _seq(0x20), Op.UNSEAL, 0, mac_input=True, fragments=True),
    ]
    fetch = sf.LogFetch(_seq(0x40), 0, 10)
    raw = sf.encode(fetch)
    entries = sf.decode_message(lock.handle_message(raw))
    assert isinstance(entries, sf.LogEntries)
    blocks.append(
        [("LOG_FETCH", raw.hex()), ("LOG_ENTRIES", sf.encode(entries).hex())]
        + [
            (f" entry {e.index} ({e.event.name})", sf.encode_log_entry(e).hex())
            for e in entries.entries
        ]
    )
    payload = lock.advert_payload()
    blocks.append(
        [("payload", payload.hex()), ("advertising data", advertising_data(payload).hex())]
    )
    blocks.append(_exchange(lock, main, _seq(0x50), Op.UNSEAL, 0, notified=True))
    blocks.append(_exchange(lock, clock_only, _seq(0x70), Op.SET_TIME, RTC + 30))
    blocks.append(
        [
            (f"ERROR({code.name})", sf.encode(sf.ErrorFrame(code)).hex())
            for code in (sf.ErrorCode.BAD_FRAME, sf.ErrorCode.BUSY, sf.ErrorCode.TIMEOUT)
        ]
    )
    return blocks


def _exchange(
    lock: LockModel,
    credential: ex.TicketCredential,
    gw_nonce: bytes,
    op: sf.Operation,
    arg: int,
    *,
    mac_input: bool = False,
    fragments: bool = False,
    notified: bool = False,
) -> Block:
    request = sf.ChallengeRequest(gw_nonce)
    challenge = sf.decode_message(lock.handle_message(sf.encode(request)))
    assert isinstance(challenge, sf.Challenge)
    ctx = ex.check_challenge(request, challenge, LOCK_1, None)
    command = ex.build_command(credential, ctx, challenge.counter, op, arg)
    answer = lock.handle_message(sf.encode(command))
    result = sf.decode_message(answer)
    assert isinstance(result, sf.CommandResult)
    ex.verify_result(credential, ctx, command, result)
    block = [
        ("CHALLENGE_REQUEST", sf.encode(request).hex()),
        ("CHALLENGE", sf.encode(challenge).hex()),
        ("COMMAND", sf.encode(command).hex()),
    ]
    if mac_input:
        prefix = LOCK_1 + challenge.nonce + gw_nonce
        block.append((" MAC input", (crypto.LABEL_COMMAND + prefix + sf.mac_input(command)).hex()))
    if fragments:
        block.append(
            (" fragments (MTU 23)", "".join(f.hex() for f in fragment(sf.encode(command))))
        )
    block.append(("COMMAND_RESULT", answer.hex()))
    if notified:
        block.append((" notified (MTU 23)", "".join(f.hex() for f in fragment(answer))))
    return block


# -- the doc side ------------------------------------------------------------------------------

_START = re.compile(r"^ ?(\S.*?)\s{2,}([0-9a-f]+)$")
_MORE = re.compile(r"^\s{8,}([0-9a-f]+)$")


def doc_blocks(text: str) -> list[Block]:
    """The (label, hex) lines of every code block of section 11, wrapped lines joined."""
    section = text.split("## 11. Test vectors", 1)[1].split("\n## ", 1)[0]
    blocks: list[Block] = []
    for code in section.split("```")[1::2]:
        block: Block = []
        for line in code.splitlines():
            if (more := _MORE.match(line)) and block:
                block[-1] = (block[-1][0], block[-1][1] + more.group(1))
            elif start := _START.match(line):
                block.append((start.group(1).strip(), start.group(2)))
        if block:
            blocks.append(block)
    return blocks


def render(blocks: list[Block], out: Callable[[str], None] = print) -> None:
    """Print blocks in the doc's layout (labels padded, hex wrapped at 70, fragments per line)."""
    for block in blocks:
        out("```")
        for label, value in block:
            step = 40 if label.strip().startswith(("fragments", "notified")) else WRAP
            chunks = (
                _fragment_lines(value)
                if step == 40
                else [value[i : i + WRAP] for i in range(0, len(value), WRAP)]
            )
            out(f"{label:<{LABEL_WIDTH}}{chunks[0]}")
            for chunk in chunks[1:]:
                out(" " * LABEL_WIDTH + chunk)
        out("```")


def _fragment_lines(value: str) -> list[str]:
    data = bytes.fromhex(value)
    first = 20
    lines = [data[:first].hex()]
    lines += [data[i : i + 20].hex() for i in range(first, len(data), 20)]
    return lines


def test_every_vector_in_the_doc_matches_the_code() -> None:
    expected = [[(label.strip(), value) for label, value in b] for b in vector_blocks()]
    assert doc_blocks(DOC.read_text(encoding="utf-8")) == expected
