"""Scenarios run inside the BlueZ VM, with the gateway daemon on `bluez:hci0`.

Usage (inside the VM): python3 guest_scenarios.py OUT_JSON WORK_DIR LOG_DIR

One `guest_bed.Bed` (a Mosquitto, `sealgw sim --radio vhci` with twenty locks, `sealgw run`)
serves every scenario in turn; each is checked on what reached the broker inside the VM. A
scenario's failure is its result and the next one runs. OUT_JSON gets
`{"scenarios": {name: {ok, s, detail | error, ...}}, "cpu_s": {...}}`; the exit code is 0 only
when every scenario passed. WORK_DIR holds state (SQLite needs a local file system), LOG_DIR the
processes' logs (the 9p share, so they survive a hung guest).

More scenarios: any other `guest_*.py` beside this file with a `SCENARIOS` list of
`(name, body)` pairs, `body(bed)` returning a detail line (str) or a dict with "detail" and
data for the host to check; its optional `configure(bed)` runs before the bed starts (see
guest_bed.py). They run after the steady scenarios and before the disruptive ones (the
gateway killed, bluetoothd restarted).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from guest_bed import Bed, cpu_seconds, note, pids, wait

LOCKS = 20
BUDGET = 5  # max_connections of the sim's gateway config (the default)
OPERATOR = "op-0042"
ROLE = "meter_installer"
WORK_ORDER = "WO-BLUEZ-1"
OP_SEAL = "SL-0001"
GONE_SEAL = "SL-0004"
LATE_SEAL = "SL-0005"
SLOW_ANSWER_S = 5  # long enough to kill the gateway between the lock's act and its answer

Body = Callable[[Bed], Any]


# -- steady scenarios -------------------------------------------------------------------------


def adverts(bed: Bed) -> str:
    """Every lock online from verified adverts (after its seeding probe through the scheduler)."""
    assert bed.broker is not None
    states = bed.broker.states
    wait(
        f"all {bed.locks} seals online from verified adverts",
        lambda: sum(1 for s in states.values() if s.get("online")) == bed.locks,
        30 + 4 * bed.locks,
    )
    return f"{bed.locks} seals online"


def tamper_without_connecting(bed: Bed) -> str:
    """A tamper is noticed from the advert alone."""
    bed.control("lock SL-0002 tamper")
    wait(
        "seal.tamper from the advert",
        lambda: any(
            e["data"].get("source") == "advert" for e in bed.events("seal.tamper", "SL-0002")
        ),
        20,
    )
    return "seal.tamper (source advert) for SL-0002"


def reconcile_over_bluez(bed: Bed) -> str:
    """Every lock log entry reaches the broker exactly once, over BlueZ connections."""
    count = bed.wait_reconciled("every lock log entry delivered once", 60)
    return f"{count} lock log entries, each exactly once"


def sweep(bed: Bed) -> dict[str, Any]:
    """Twenty unseeded locks, each with its boot entry, reach the scheduler at once (their first
    adverts ask for a probe): every entry is reconciled exactly once.

    The host checks the budget on the wire: a link to every lock in this window, and never more
    than five LE links up at once (btmon's file, tests/bluez/trace.py).
    """
    boots = {(lock["seal_id"], 1) for lock in bed.lock_table()}
    assert bed.broker is not None
    broker = bed.broker
    wait(f"the boot entries of all {bed.locks} locks", lambda: boots <= set(broker.delivered()), 60)
    twice = {k: v for k, v in broker.delivered().items() if k in boots and len(v) > 1}
    if twice:
        raise AssertionError(f"boot entries delivered under two ids: {twice}")
    seconds = time.time() - bed.gateway_go
    return {
        "detail": f"{bed.locks} locks probed and reconciled in {seconds:.1f} s from the gateway's start",
        "window": [bed.gateway_go, time.time()],
        "budget": BUDGET,
        "locks": bed.locks,
    }


def ops_under_ticket(bed: Bed) -> dict[str, Any]:
    """A field worker unseals and seals under a master ticket; the host counts ATT round trips."""
    bed.enroll(OPERATOR, ROLE)
    bed.pair(OPERATOR)
    ticket = bed.issue_ticket(
        work_order=WORK_ORDER, operator=OPERATOR, role=ROLE,
        seals=[OP_SEAL, GONE_SEAL], ops=["unseal", "seal"],
    )  # fmt: skip
    note(f"operator {OPERATOR} enrolled and paired, ticket {ticket[:12]} stored")
    address = _address(bed, OP_SEAL)
    ops = []
    for op, state in (("unseal", "unsealed"), ("seal", "sealed")):
        began = time.time()
        outcome = bed.operate(OPERATOR, op, OP_SEAL, WORK_ORDER)
        ended = time.time()
        if (outcome.get("status"), outcome.get("state")) != ("done", state):
            raise AssertionError(f"{op} {OP_SEAL}: {outcome}")
        kind = f"seal.{state}"
        event = wait(
            f"{kind} for {OP_SEAL} on the broker",
            lambda kind=kind: _with(bed.events(kind, OP_SEAL), operator=OPERATOR, ticket_id=ticket),
            20,
        )
        ops.append({"op": op, "seal": OP_SEAL, "address": address, "t0": began, "t1": ended,
                    "log_index": event["data"]["log_index"]})  # fmt: skip
    assert bed.broker is not None
    states = bed.broker.states
    wait(f"{OP_SEAL} retained as sealed", lambda: states[OP_SEAL].get("state") == "sealed", 20)
    return {"detail": f"unseal and seal of {OP_SEAL} done, both on the broker", "ops": ops}


def lock_gone_mid_operation(bed: Bed) -> str:
    """The lock executes the COMMAND and leaves the air before answering.

    The handheld is told the outcome is unknown (link lost), nothing is claimed, the gateway
    holds no link for it; once it is back the entry is reconciled with the request's context,
    and the next operation on it works.
    """
    failures = bed.lock_status()["connect_failures"]
    bed.control(f"lock {GONE_SEAL} out_of_range_on_command")
    outcome = bed.operate(OPERATOR, "unseal", GONE_SEAL, WORK_ORDER)
    if (outcome.get("status"), outcome.get("result"), outcome.get("reason")) != (
        "failed", "unknown", "link_lost"
    ):  # fmt: skip
        raise AssertionError(f"unseal of a lock gone mid-command: {outcome}")
    wait(
        "seal.op_unconfirmed (link_lost)",
        lambda: _with(bed.events("seal.op_unconfirmed", GONE_SEAL), reason="link_lost"),
        20,
    )
    if bed.events("seal.unsealed", GONE_SEAL):
        raise AssertionError("an unseal was claimed while the lock's answer never came")
    # The alarm reconciliation that follows cannot reach it: BlueZ's connect is given up
    # (bleak's timeout, "le-connection-abort-by-local"); it fails cleanly and holds nothing.
    wait(
        "a failed connect to the lock out of range",
        lambda: bed.lock_status()["connect_failures"] > failures,
        40,
    )
    wait("no link held, nothing queued", lambda: _idle(bed.lock_status()), 30)
    bed.control(f"lock {GONE_SEAL} in_range")
    wait(
        f"seal.unsealed for {GONE_SEAL} reconciled from its log once it is back",
        lambda: _with(bed.events("seal.unsealed", GONE_SEAL), operator=OPERATOR),
        60,
    )
    again = bed.operate(OPERATOR, "seal", GONE_SEAL, WORK_ORDER)
    if (again.get("status"), again.get("state")) != ("done", "sealed"):
        raise AssertionError(f"seal of {GONE_SEAL} after it came back: {again}")
    return (
        "unknown/link_lost, op_unconfirmed; connects to it failed and held nothing; "
        "reconciled once back; the next seal done"
    )


# -- disruptive scenarios -----------------------------------------------------------------------


def sigkill_mid_command(bed: Bed) -> str:
    """The gateway is SIGKILLed with a COMMAND in flight: the lock has acted and logged, its
    answer is not sent yet. Another fault happens while no gateway runs. The restarted gateway
    delivers every entry the locks wrote, the unseal's included, each exactly once."""
    bed.control(f"lock {OP_SEAL} slow:{SLOW_ANSWER_S}")  # acts and logs at once, answers late
    before = {index for index, _ in bed.truth_log(OP_SEAL)}
    pending = bed.start_operation(OPERATOR, "unseal", OP_SEAL, WORK_ORDER)
    if pending.get("status") != "pending":
        raise AssertionError(f"unseal of {OP_SEAL}: {pending}")
    acted = wait(
        f"{OP_SEAL} executed the unseal",
        lambda: [i for i, kind in bed.truth_log(OP_SEAL) if i not in before and kind == "unsealed"],
        30,
    )
    bed.kill_gateway()
    bed.control(f"lock {OP_SEAL} fast")
    bed.control("lock SL-0003 wire_cut")
    bed.start_gateway()
    count = bed.wait_reconciled("every entry, those of the killed command's time too", 90)
    assert bed.broker is not None
    ids = bed.broker.delivered().get((OP_SEAL, acted[0]), set())
    if len(ids) != 1:
        raise AssertionError(f"the unseal's entry {acted[0]} delivered as {ids}")
    return f"killed after {OP_SEAL} logged entry {acted[0]}; {count} entries after, none twice"


def bluetoothd_restart(bed: Bed) -> str:
    """bluetoothd restarts under the running daemon, which recovers without a restart of its own."""
    assert bed.gateway is not None
    pid = bed.gateway.pid
    bed.restart_bluetoothd()
    bed.control(f"lock {LATE_SEAL} tamper")
    wait(
        "seal.tamper from an advert after bluetoothd restarted (scanning resumed)",
        lambda: _with(bed.events("seal.tamper", LATE_SEAL), source="advert"),
        40,
    )
    outcome = bed.operate(OPERATOR, "unseal", GONE_SEAL, WORK_ORDER)  # sealed, not tampered
    if (outcome.get("status"), outcome.get("state")) != ("done", "unsealed"):
        raise AssertionError(f"unseal after bluetoothd restarted: {outcome}")
    if bed.gateway.poll() is not None or bed.gateway.pid != pid:
        raise AssertionError("the gateway did not survive bluetoothd's restart")
    downs, ups = bed.events("gateway.radio_down"), bed.events("gateway.radio_up")
    return f"adverts resumed, unseal done, same gateway pid; radio_down {len(downs)}, radio_up {len(ups)}"


STEADY: list[tuple[str, Body]] = [
    ("adverts", adverts),
    ("sweep_20_locks_budget_5", sweep),
    ("tamper_without_connecting", tamper_without_connecting),
    ("reconcile_over_bluez", reconcile_over_bluez),
    ("ops_under_ticket", ops_under_ticket),
    ("lock_gone_mid_operation", lock_gone_mid_operation),
]
DISRUPTIVE: list[tuple[str, Body]] = [
    ("sigkill_mid_command", sigkill_mid_command),
    ("bluetoothd_restart", bluetoothd_restart),
]


# -- the run ------------------------------------------------------------------------------------


def scenario_modules() -> list[ModuleType]:
    """The other guest_*.py beside this file that define SCENARIOS."""
    here = Path(__file__).resolve().parent
    found = []
    for path in sorted(here.glob("guest_*.py")):
        if path.stem in ("guest_scenarios", "guest_bed"):
            continue
        module = importlib.import_module(path.stem)
        if hasattr(module, "SCENARIOS"):
            found.append(module)
    return found


def warm_imports() -> None:
    """Import what the operator scenarios need while the simulator and gateway start: the
    guest has two CPUs, and these imports cost seconds under emulation."""
    import paho.mqtt.client  # noqa: F401

    import firmware_sim.handheld.client  # noqa: F401
    import gateway.auth.provision
    import gateway.daemon.control  # noqa: F401
    import master_station.authority
    import master_station.command_client  # noqa: F401


def main(out: Path, work: Path, logs: Path) -> int:
    threading.Thread(target=warm_imports, name="warm-imports", daemon=True).start()
    results: dict[str, dict[str, Any]] = {}
    bed = Bed(work, logs, locks=LOCKS)
    extra: list[tuple[str, Body]] = []
    try:
        for module in scenario_modules():
            configure = getattr(module, "configure", None)
            if configure is not None:
                configure(bed)
            extra += list(module.SCENARIOS)
        bed.start()
        for name, body in [*STEADY, *extra, *DISRUPTIVE]:
            results[name] = run_one(name, body, bed)
    except Exception as exc:  # the harness prints every log; say what broke first
        note(f"setup failed: {exc!r}")
        results["setup"] = {"ok": False, "error": repr(exc)}
    finally:
        note("stopping")
        cpu = _cpu(bed)
        bed.stop()
        out.write_text(json.dumps({"scenarios": results, "cpu_s": cpu}, indent=1))
        note("stopped")
    return 0 if results and all(r["ok"] for r in results.values()) else 1


def run_one(name: str, body: Body, bed: Bed) -> dict[str, Any]:
    """Run one scenario; its exception is its result."""
    started = time.monotonic()
    note(f"scenario {name}")
    try:
        value = body(bed)
    except Exception as exc:
        note(f"scenario {name} failed: {exc!r}")
        return {"ok": False, "s": round(time.monotonic() - started, 1), "error": repr(exc)}
    result = value if isinstance(value, dict) else {"detail": str(value)}
    note(f"scenario {name} passed: {result['detail']}")
    return {"ok": True, "s": round(time.monotonic() - started, 1), **result}


def _address(bed: Bed, seal: str) -> str:
    return next(str(lock["address"]) for lock in bed.lock_table() if lock["seal_id"] == seal)


def _with(events: list[dict[str, Any]], **data: Any) -> dict[str, Any] | None:
    """The first event whose data has every key=value given."""
    for event in events:
        body = event.get("data") or {}
        if all(body.get(key) == value for key, value in data.items()):
            return event
    return None


def _idle(locks: dict[str, Any]) -> bool:
    return locks.get("connected") == 0 and locks.get("queued") == 0


def _cpu(bed: Bed) -> dict[str, float]:
    """CPU seconds so far of the long-lived processes (the driver's own included)."""
    cpu: dict[str, float] = {"driver": round(sum(os.times()[:2]), 1)}
    for name, child in (("gateway", bed.gateway), ("sim", bed.sim), ("mosquitto", bed.mosquitto)):
        if child is not None and child.poll() is None:
            cpu[name] = round(cpu_seconds(child.pid), 1)
    for comm in ("bluetoothd", "dbus-daemon", "btmon"):
        cpu[comm] = round(sum(cpu_seconds(pid) for pid in pids(comm)), 1)
    return cpu


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
