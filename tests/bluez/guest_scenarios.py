"""Scenarios run inside the BlueZ VM, with the gateway daemon on `bluez:hci0`.

Runs a Mosquitto, `sealgw sim --radio vhci` (locks only) and `sealgw run`, watches the broker,
and checks each scenario on what reached it. Prints one JSON object (scenario -> ok, detail)
and exits 0 only when every scenario passed. Lean on purpose: under QEMU's software emulation
each Python start-up costs seconds.

Usage (inside the VM): python3 guest_scenarios.py OUT_JSON WORK_DIR LOG_DIR

WORK_DIR holds state (SQLite: a local file system); LOG_DIR the processes' logs (the 9p share).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

GATEWAY = "gw-bluez"
LOCKS = 3  # each lock costs a probe connection first (advert seeding), seconds under TCG
ROOT = "sealgw/v1"
PORT = 1883
PATIENCE = float(os.environ.get("PATIENCE", "4"))


class Broker:
    """Every event and retained seal state the gateway publishes, as the driver saw them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.states: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bluez-driver")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", PORT)
        self.client.subscribe(f"{ROOT}/{GATEWAY}/#", qos=1)
        self.client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        parts = message.topic.split("/")
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        with self._lock:
            if "events" in parts:
                self.events.append(body)
            elif "seals" in parts and parts[-1] == "state":
                self.states[parts[-2]] = body

    def typed(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("type") == kind]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def note(text: str) -> None:
    """A line in scenarios.log, stamped with the guest's uptime (compare with the console)."""
    uptime = Path("/proc/uptime").read_text().split()[0]
    print(f"[{uptime}s] {text}", flush=True)


def wait(what: str, condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout * PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout * PATIENCE:.0f} s")
        time.sleep(0.2)


def start_gateway(config: Path, logs: Path) -> subprocess.Popen[bytes]:
    log = (logs / "gateway.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(config)], stdout=log, stderr=log
    )


def lock_entries(truth: Path) -> set[tuple[str, int]]:
    found = set()
    for line in truth.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "lock_log":
            found.add((record["seal"], int(record["index"])))
    return found


def delivered(broker: Broker) -> dict[tuple[str, int], set[str]]:
    seen: dict[tuple[str, int], set[str]] = {}
    for event in list(broker.events):
        index = (event.get("data") or {}).get("log_index")
        if str(event.get("type", "")).startswith("seal.") and isinstance(index, int) and index:
            seen.setdefault((event["subject"], index), set()).add(event["id"])
    return seen


def main(out: Path, work: Path, logs: Path) -> int:
    results: dict[str, dict[str, Any]] = {}
    work.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    mosquitto = subprocess.Popen(
        ["mosquitto", "-p", str(PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    config, truth = work / "gw.toml", work / "truth.jsonl"
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sim", "--radio", "vhci", "--no-meters",
         "--locks", str(LOCKS), "--advertising-interval-ms", "500",
         "--broker", f"mqtt://127.0.0.1:{PORT}", "--gateway-id", GATEWAY,
         "--write-config", str(config), "--truth", str(truth), "--state-dir", str(work / "sim")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=(logs / "sim.log").open("ab"),
    )  # fmt: skip
    assert sim.stdout is not None and sim.stdin is not None
    gateway: subprocess.Popen[bytes] | None = None
    broker: Broker | None = None

    def control(line: str) -> None:
        assert sim.stdin is not None and sim.stdout is not None
        sim.stdin.write(f"{line}\n".encode())
        sim.stdin.flush()
        answer = sim.stdout.readline().decode().strip()
        while not answer.startswith(("ok ", "error ")):
            answer = sim.stdout.readline().decode().strip()
        if not answer.startswith("ok "):
            raise RuntimeError(answer)

    def scenario(name: str, body: Callable[[], str]) -> None:
        started = time.monotonic()
        note(f"scenario {name}")
        try:
            detail = body()
            results[name] = {
                "ok": True,
                "s": round(time.monotonic() - started, 1),
                "detail": detail,
            }
        except Exception as exc:  # a scenario's failure is its result, and the next one runs
            results[name] = {
                "ok": False,
                "s": round(time.monotonic() - started, 1),
                "error": repr(exc),
            }

    try:
        note("simulator started")
        ready = sim.stdout.readline().decode()
        note(f"simulator: {ready.strip()}")
        if not ready.startswith("sim ready"):
            raise RuntimeError(f"simulator did not start: {ready!r}")
        broker = Broker()
        gateway = start_gateway(config, logs)
        b = broker

        def adverts() -> str:
            wait("gateway.started", lambda: bool(b.typed("gateway.started")), 30)
            note("gateway.started")
            wait(
                f"all {LOCKS} seals online from verified adverts",
                lambda: sum(1 for s in b.states.values() if s.get("online")) == LOCKS,
                30,
            )
            return f"{LOCKS} seals online, states {sorted(b.states)}"

        def tamper() -> str:
            control("lock SL-0002 tamper")
            wait(
                "seal.tamper from the advert",
                lambda: any(
                    e["subject"] == "SL-0002" and e["data"].get("source") == "advert"
                    for e in b.typed("seal.tamper")
                ),
                20,
            )
            return "seal.tamper (source advert) for SL-0002"

        def reconcile() -> str:
            expected = lock_entries(truth)
            wait(
                "every lock log entry delivered once (connects through BlueZ)",
                lambda: expected <= set(delivered(b)),
                60,
            )
            twice = {k: v for k, v in delivered(b).items() if len(v) > 1}
            if twice:
                raise AssertionError(f"entries delivered under two ids: {twice}")
            return f"{len(expected)} lock log entries, each exactly once"

        def killed_and_restarted() -> str:
            nonlocal gateway
            assert gateway is not None
            gateway.send_signal(signal.SIGKILL)
            gateway.wait(30)
            control("lock SL-0003 wire_cut")
            control("lock SL-0001 tamper")
            gateway = start_gateway(config, logs)
            wait("a second gateway.started", lambda: len(b.typed("gateway.started")) >= 2, 30)
            expected = lock_entries(truth)
            wait(
                "entries written while the gateway was down reconciled",
                lambda: expected <= set(delivered(b)),
                60,
            )
            twice = {k: v for k, v in delivered(b).items() if len(v) > 1}
            if twice:
                raise AssertionError(f"entries delivered under two ids: {twice}")
            return f"{len(expected)} entries after a SIGKILL, none twice"

        for name, body in (
            ("adverts", adverts),
            ("tamper_without_connecting", tamper),
            ("reconcile_over_bluez", reconcile),
            ("sigkill_and_reconcile", killed_and_restarted),
        ):
            scenario(name, body)
    except Exception as exc:  # the harness prints every log; say what broke first
        results["setup"] = {"ok": False, "error": repr(exc)}
    finally:
        for child in (gateway, sim):
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(60)
                except subprocess.TimeoutExpired:
                    child.kill()
        if broker is not None:
            broker.close()
        mosquitto.terminate()
        out.write_text(json.dumps(results, indent=1))
    return 0 if results and all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
