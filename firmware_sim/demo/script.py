"""The demo's scripted day in a district, one function per step.

Each step causes something (a handheld request, a fault on the simulator's control channel, an
outage) and waits for its consequence on the independent subscriber or in the master's ledger,
with a timeout. A step that does not see its consequence raises `DemoStepError` naming what was
missing; `play` then stops the day and reports which step failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from firmware_sim.demo.day import (
    AUDIT_SEAL,
    AUDITOR,
    GATEWAY_ID,
    INSTALL_SEAL,
    INSTALLER,
    LINE_LOSS_THIEF,
    OUTAGE_SEAL,
    REPLACE_SEAL,
    TAMPER_SEAL,
    THEFT_SEAL,
    Day,
    buffer_head,
    enroll,
    issue_ticket,
    ledger_complete_to,
    ledger_seqs,
    locks_heard_since,
    operate,
    pair,
    read_state,
    start_district,
    start_gateway,
)
from firmware_sim.procs import DemoStepError
from master_station.authority import MasterAuthority
from master_station.kpi.report import compute_kpis, load_inputs
from master_station.ledger.factory import open_ledger

__all__ = ["STEPS", "StepResult", "play"]

Step = Callable[[Day], None]
DRAIN_TIMEOUT_S = 40.0
FINISH_RESERVE_S = 2.5


@dataclass(frozen=True, slots=True)
class StepResult:
    """How one step of the day went."""

    name: str
    ok: bool
    seconds: float
    error: str = ""


def play(day: Day) -> list[StepResult]:
    """Run the steps in order; stop at the first failure (later steps depend on earlier ones)."""
    results: list[StepResult] = []
    for number, (name, step) in enumerate(STEPS, start=1):
        day.timeline.step = number
        day.timeline.say(f"{name} ...")
        started = time.monotonic()
        try:
            step(day)
        except (DemoStepError, TimeoutError, OSError) as exc:
            day.timeline.say(f"FAILED {name}: {exc}")
            results.append(StepResult(name, False, time.monotonic() - started, str(exc)))
            break
        results.append(StepResult(name, True, time.monotonic() - started))
    return results


# -- work orders ------------------------------------------------------------------------------


def meter_replacement(day: Day) -> None:
    """WO-1001: ticket, pairing, unseal, meter cover opened and closed (no theft), seal."""
    say = _prefixed(day, "meter replacement WO-1001")
    enroll(day, INSTALLER, "Li Wei", "meter_installer")
    fingerprint = pair(day, day.handhelds[INSTALLER])
    say(f"handheld of {INSTALLER} paired with a console code (gateway key {fingerprint})")
    ticket = issue_ticket(day, work_order="WO-1001", flow="meter_replace", operator=INSTALLER,
                          role="meter_installer", seal=REPLACE_SEAL, ops="unseal,seal")  # fmt: skip
    say(f"ticket {ticket[:12]}… issued and accepted by the gateway")
    _lock_op(day, say, INSTALLER, "unseal", REPLACE_SEAL, work_order="WO-1001")
    meter = _meter_of(day, REPLACE_SEAL)
    _sim(day, f"meter {meter} cover_open")
    _wait_meter_event(day, meter, "cover_opened")
    say(f"meter work: {meter} cover opened under the authorized unseal")
    _sim(day, f"meter {meter} cover_close")
    _lock_op(day, say, INSTALLER, "seal", REPLACE_SEAL, work_order="WO-1001")
    if any(_is_theft(e, meter) for e in day.events()):
        raise DemoStepError(f"theft.suspected raised for authorized work on {meter}")
    say(f"result: done, no theft alarm for {meter} (the unseal was authorized)")


def new_installation(day: Day) -> None:
    """WO-1002, flow new_install: the installer opens a box for a new meter and seals it."""
    say = _prefixed(day, "new installation WO-1002")
    ticket = issue_ticket(day, work_order="WO-1002", flow="new_install", operator=INSTALLER,
                          role="meter_installer", seal=INSTALL_SEAL, ops="unseal,seal")  # fmt: skip
    say(f"ticket {ticket[:12]}… issued")
    _lock_op(day, say, INSTALLER, "unseal", INSTALL_SEAL, work_order="WO-1002")
    _lock_op(day, say, INSTALLER, "seal", INSTALL_SEAL, work_order="WO-1002")


def audit(day: Day) -> None:
    """WO-1003, flow audit: an auditor pairs and reads a seal's state under an audit ticket."""
    say = _prefixed(day, "audit WO-1003")
    enroll(day, AUDITOR, "Zhang Min", "auditor")
    pair(day, day.handhelds[AUDITOR])
    ticket = issue_ticket(day, work_order="WO-1003", flow="audit", operator=AUDITOR,
                          role="auditor", seal=AUDIT_SEAL, ops="read_state")  # fmt: skip
    day.audit_ticket = ticket
    tickets, state = read_state(day, AUDITOR, AUDIT_SEAL)
    if not any(t["ticket_id"] == ticket for t in tickets):
        raise DemoStepError(f"the auditor's handheld does not list ticket {ticket}")
    say(f"{AUDITOR} paired, holds ticket {ticket[:12]}…; {AUDIT_SEAL} is {state['state']}")


def denied_attempt(day: Day) -> None:
    """The auditor tries to unseal under the audit ticket: the policy denies it (wrong role)."""
    say = _prefixed(day, "denied attempt")
    outcome = operate(day, AUDITOR, "unseal", AUDIT_SEAL, "WO-1003", ticket=day.audit_ticket)
    if outcome["status"] != "denied":
        raise DemoStepError(f"the auditor's unseal was not denied: {outcome}")
    event = day.wait_event(
        "seal.op_denied",
        lambda e: e["type"] == "seal.op_denied" and e["subject"] == AUDIT_SEAL,
        15,
    )
    say(f"{AUDITOR} unseal {AUDIT_SEAL}: denied, reason {event['data']['reason']} "
        f"({event['data'].get('detail', '')})")  # fmt: skip


# -- alarms -----------------------------------------------------------------------------------


def tamper_alarm(day: Day) -> None:
    """A forced shell on a sealed lock: seal.tamper at alarm priority."""
    say = _prefixed(day, "tamper alarm")
    _sim(day, f"lock {TAMPER_SEAL} tamper")
    event = day.wait_event(
        "seal.tamper", lambda e: e["type"] == "seal.tamper" and e["subject"] == TAMPER_SEAL, 20
    )
    say(f"seal.tamper on {TAMPER_SEAL} (seq {event['seq']}, priority {event['priority']})")


def theft(day: Day) -> None:
    """A meter cover opened while its box seal is sealed and no unseal is authorized."""
    say = _prefixed(day, "theft")
    meter = _meter_of(day, THEFT_SEAL)
    _sim(day, f"meter {meter} cover_open")
    event = day.wait_event("theft.suspected", lambda e: _is_theft(e, meter), 20)
    say(f"theft.suspected: {meter} under sealed {THEFT_SEAL}, rule {event['data'].get('rule')}")


def line_loss_theft(day: Day) -> None:
    """District line loss: honest days, then a bypass after a tamper; the alarm names the meter.

    The line-loss district's meters run a compressed day (a simulated day every few seconds),
    so its daily intervals have been closing since start-up.
    """
    say = _prefixed(day, "line-loss theft")
    day.wait("a line-loss baseline (three honest days)", lambda: _baseline_day(day) is not None, 40)
    honest = _baseline_day(day)
    assert honest is not None
    if any(e["type"] == "district.line_loss_alarm" for e in day.events()):
        raise DemoStepError("honest days raised a district.line_loss_alarm")
    data = honest["data"]
    say(f"district {data['district']}: {_count_days(day)} honest days, loss {data['rate']:.1%} "
        f"against a baseline of {data['baseline_rate']:.1%}; no alarm")  # fmt: skip
    meter = LINE_LOSS_THIEF
    seal = day.meters[meter]["seal"]
    _sim(day, f"lock {seal} tamper")
    day.wait_event("seal.tamper", lambda e: e["type"] == "seal.tamper" and e["subject"] == seal, 20)
    _sim(day, f"meter {meter} bypass")
    day.bypassed = meter
    say(f"{seal} tampered, then 60 % of {meter}'s load bypasses its meter")
    theft = day.wait_event("theft.suspected, rule line_loss_jump", _line_loss_theft, 30)
    _sim(day, f"meter {meter} bypass_off")
    alarm = day.wait_event("district.line_loss_alarm", _is_type("district.line_loss_alarm"), 5)
    named = theft["data"]["meter"]
    if named != meter:
        raise DemoStepError(f"the line-loss alarm named {named}, not the bypassed {meter}")
    found = alarm["data"]
    say(f"district.line_loss_alarm: loss {found['rate']:.1%} against {found['baseline_rate']:.1%} "
        f"({', '.join(found['reasons'])})")  # fmt: skip
    top, under = theft["data"]["evidence"]["suspects"][0], theft["data"]
    say(f"theft.suspected, rule line_loss_jump: {named} under {under['seal']} "
        f"({under['seal_state']}), use down {top['drop_ratio']:.0%}; bypass removed")  # fmt: skip


def _baseline_day(day: Day) -> dict[str, Any] | None:
    """The first line-loss interval compared with a baseline (three honest days before it)."""
    return next(
        (
            e
            for e in day.events()
            if e["type"] == "district.line_loss" and e["data"].get("baseline_rate") is not None
        ),
        None,
    )


def _count_days(day: Day) -> int:
    return len({e["id"] for e in day.events() if e["type"] == "district.line_loss"})


def _line_loss_theft(event: dict[str, Any]) -> bool:
    return bool(event["type"] == "theft.suspected" and event["data"]["rule"] == "line_loss_jump")


def _is_type(kind: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: bool(event["type"] == kind)


# -- outage and restart -----------------------------------------------------------------------


def broker_outage(day: Day) -> None:
    """The uplink goes away while events keep coming; the backlog drains after it returns."""
    say = _prefixed(day, "broker outage")
    outage_s = min(6.0, max(3.0, day.duration_s * 0.08))
    before = buffer_head(day)
    _outage(day, down=True)
    say(f"{_outage_kind(day)} for {outage_s:.0f} s; faults keep happening")
    _sim(day, f"lock {OUTAGE_SEAL} low_battery")
    _sim(day, f"lock {OUTAGE_SEAL} tamper")
    time.sleep(outage_s)  # the one fixed wait of the demo: the outage itself
    head = buffer_head(day)
    if head <= before:
        raise DemoStepError("no events were committed during the outage")
    _outage(day, down=False)
    started = time.monotonic()
    say(f"uplink back; {head - before} events buffered during the outage, draining")
    day.wait("backlog drained into the ledger", ledger_complete_to(day, head), DRAIN_TIMEOUT_S)
    say(f"backlog drained: ledger complete to seq {head} after {time.monotonic() - started:.1f} s")


def gateway_restart(day: Day) -> None:
    """SIGKILL the gateway and start it again: it resumes its chain from its buffer."""
    say = _prefixed(day, "gateway restart")
    if day.gateway is None:
        raise DemoStepError("the gateway is not running")
    day.gateway.kill()
    head = buffer_head(day)
    say(f"gateway SIGKILLed at seq {head}")
    start_gateway(day)
    started = [e for e in day.events() if e["type"] == "gateway.started"][-1]
    if started["seq"] <= head:
        raise DemoStepError(f"gateway.started at seq {started['seq']} does not follow {head}")
    day.wait("ledger complete after restart", ledger_complete_to(day, started["seq"]), 30)
    say(f"resumed at seq {started['seq']}; ledger complete to it, no gap")
    day.wait("every lock heard again", locks_heard_since(day, started["ts"]), 20)
    say("every lock heard again: its retained state is fresh in the ledger")


def end_of_day(day: Day) -> None:
    """Quiet hours (meters keep polling) until the day's end, gaps healed, everything stopped."""
    say = _prefixed(day, "end of day")
    _quiet_hours(day, say)
    head = buffer_head(day)
    day.wait("gaps healed (cmd/resend)", ledger_complete_to(day, head), 30)
    _heal_subscriber(day, head)
    day.kpi = kpi_snapshot(day)
    if day.gateway is None:
        raise DemoStepError("the gateway is not running")
    code = day.gateway.stop()
    head = buffer_head(day)
    say(f"gateway stopped with SIGTERM (exit {code}); committed head seq {head}")
    day.wait("the ledger holds every committed event", ledger_complete_to(day, head), 20)
    day.wait("the subscriber saw every event", lambda: _subscriber_has(day, head), 10)
    if code != 0:
        raise DemoStepError(f"the gateway exited {code} on SIGTERM")
    for child in (day.master, day.sim.child if day.sim else None):
        if child is not None and child.stop() != 0:
            raise DemoStepError(f"{child.name} did not stop cleanly")
    say(f"ledger holds seq 1..{head}; master station and simulator stopped")


def kpi_snapshot(day: Day) -> dict[str, Any]:
    """The district KPIs over the ledger while the gateway is still online.

    The meter read success rate needs per-meter poll counters in gateway.health; when the
    gateway publishes only its own summary, that summary's rate is taken and labelled so.
    """
    ledger = open_ledger(day.ledger)
    try:
        kpi = compute_kpis(load_inputs(ledger)).total.to_json()
        health = ledger.events(types=["gateway.health"])
    finally:
        ledger.close()
    kpi["meter_read_success_source"] = "kpi"
    if kpi["meter_read_success_rate"] is None and health:
        meters = health[-1].data.get("meters") or {}
        kpi["meter_read_success_rate"] = meters.get("read_success_rate")
        kpi["meter_read_success_source"] = "gateway.health"
    return kpi


STEPS: tuple[tuple[str, Step], ...] = (
    ("district start-up", start_district),
    ("meter replacement WO-1001", meter_replacement),
    ("new installation WO-1002", new_installation),
    ("audit WO-1003", audit),
    ("denied attempt", denied_attempt),
    ("tamper alarm", tamper_alarm),
    ("theft", theft),
    ("line-loss theft", line_loss_theft),
    ("broker outage", broker_outage),
    ("gateway restart", gateway_restart),
    ("end of day", end_of_day),
)


# -- helpers ----------------------------------------------------------------------------------


def _prefixed(day: Day, name: str) -> Callable[[str], None]:
    return lambda text: day.timeline.say(f"{name}: {text}")


def _lock_op(
    day: Day, say: Callable[[str], None], operator: str, op: str, seal: str, *, work_order: str
) -> None:
    outcome = operate(day, operator, op, seal, work_order)
    if outcome["status"] != "done":
        raise DemoStepError(f"{op} {seal} for {work_order}: {outcome}")
    kind = "seal.unsealed" if op == "unseal" else "seal.sealed"
    day.wait_event(
        kind,
        lambda e: (
            e["type"] == kind and e["subject"] == seal and e["data"]["work_order"] == work_order
        ),
        15,
    )
    say(f"{kind.split('.')[1]} {seal} (op {outcome['op_id']}, lock log {outcome['log_index']})")


def _meter_of(day: Day, seal: str) -> str:
    return next(meter for meter, info in day.meters.items() if info["seal"] == seal)


def _sim(day: Day, line: str) -> None:
    if day.sim is None:
        raise DemoStepError("the simulator is not running")
    day.sim.command(line)


def _wait_meter_event(day: Day, meter: str, kind: str) -> None:
    day.wait_event(
        f"meter.event {kind} on {meter}",
        lambda e: (
            e["type"] == "meter.event" and e["subject"] == meter and e["data"]["event"] == kind
        ),
        20,
    )


def _is_theft(event: dict[str, Any], meter: str) -> bool:
    return bool(event["type"] == "theft.suspected" and event["subject"] == meter)


def _outage(day: Day, *, down: bool) -> None:
    if day.broker is not None:
        day.broker.stop() if down else day.broker.start()
    elif day.relay is not None:
        day.relay.cut() if down else day.relay.restore()


def _outage_kind(day: Day) -> str:
    return "Mosquitto stopped" if day.broker is not None else "relay to the broker cut"


def _quiet_hours(day: Day, say: Callable[[str], None]) -> None:
    until = day.duration_s - FINISH_RESERVE_S
    while (left := until - day.timeline.elapsed()) > 0:
        time.sleep(min(5.0, left))
        readings = sum(1 for e in day.events() if e["type"] == "meter.reading")
        say(f"quiet hours: {len(ledger_seqs(day))} events in the ledger, {readings} readings")


def _heal_subscriber(day: Day, head: int) -> None:
    missing = sorted(set(range(1, head + 1)) - {e["seq"] for e in day.events()})
    if missing:
        signer = MasterAuthority.open(day.master_dir).sign_command
        day.sub().request_resend(GATEWAY_ID, missing[0], missing[-1], signer=signer)
        day.wait(
            f"subscriber healed ({len(missing)} missed)", lambda: _subscriber_has(day, head), 15
        )


def _subscriber_has(day: Day, head: int) -> bool:
    return set(range(1, head + 1)) <= {e["seq"] for e in day.events()}
