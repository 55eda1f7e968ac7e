"""`sealgw probe NAME --json` (docs/probe.md): each probe, as a process, measuring the real thing.

Figures are not asserted against goals (timings belong to the bench); what is asserted is that
each probe did the work it reports: the events it says it drained reached the broker, the
requests it says a cycle costs reached the meter, the probe leaves the gateway's state alone.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from firmware_sim.meters.dlt645 import SimMeter
from firmware_sim.meters.fleet import PROFILE_MODELS, PROFILES_DIR
from firmware_sim.meters.maps import MAPS
from firmware_sim.meters.modbus import ModbusLine, ModbusSimMeter
from gateway.protocol.clock import SystemClock
from gateway.protocol.draft_lines import encode_draft_line
from gateway.protocol.events import EventDraft, Priority
from tests.fixtures.mosquitto import Broker, SubscriberFactory
from tests.fixtures.procs import REPO, marked_env, new_mark

TIMEOUT_S = 120.0


async def _probe(*args: object) -> tuple[int, dict[str, Any], str]:
    """Run `python -m gateway probe ARGS --json` without blocking the loop: (code, JSON, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "probe", *map(str, args), "--json",
        cwd=REPO, env=marked_env(new_mark()),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(TIMEOUT_S):
        out, err = await process.communicate()
    lines = out.decode().strip().splitlines()
    return process.returncode or 0, json.loads(lines[-1]) if lines else {}, err.decode()


async def test_authz_probe_times_an_allowed_decision_and_its_parts() -> None:
    code, result, err = await _probe("authz", "--quick")

    assert code == 0, err
    assert (result["probe"], result["signatures_per_decision"]) == ("authz", 3)
    assert list(result)[-1] == "decisions_per_s" and result["decisions_per_s"] > 0
    assert 0 < result["verify_ticket_us"] < result["decide_us"]
    assert result["logic_only_decide_us"] < result["decide_us"]
    assert result["audit_chain_events"] == 2000 and result["audit_verify_events_per_s"] > 0


async def test_ingest_probe_commits_every_event_in_its_own_scratch_buffer(tmp_path: Path) -> None:
    code, result, err = await _probe(
        "ingest", "--events", 2000, "--producers", 16, "--work-dir", tmp_path
    )

    assert code == 0, err
    assert result["events"] == 2000 and result["producers"] == 16
    assert result["events_per_s"] > 0 and result["p99_commit_ms"] > 0
    assert (tmp_path / "ingest.db").is_file()  # where it was told, nowhere else


async def test_buffer_probe_drains_what_it_wrote(tmp_path: Path) -> None:
    code, result, err = await _probe(
        "buffer", "--events", 2000, "--rate", 1000, "--seconds", 0.5, "--work-dir", tmp_path
    )

    assert code == 0, err
    assert result["burst_events"] == 2000
    assert result["drained"] == result["pending_before"] == 2000 + 500
    assert result["paced_p50_ms"] <= result["paced_p99_ms"] <= result["paced_max_ms"]


async def test_drain_probe_publishes_the_drafts_it_was_given(
    tmp_path: Path, mosquitto: Broker, subscriber_factory: SubscriberFactory
) -> None:
    drafts = [
        EventDraft("meter.reading", f"M-{n:04d}", {"n": n}, Priority.TELEMETRY, datetime.now(UTC))
        for n in range(50)
    ]
    file = tmp_path / "drafts.jsonl"
    file.write_text("".join(encode_draft_line(d) + "\n" for d in drafts))
    subscriber = await subscriber_factory(mosquitto, ["sealgw/v1/gw-probe-test/events/#"]).start()

    code, result, err = await _probe(
        "drain", "--broker", mosquitto.url, "--drafts", file, "--gateway-id", "gw-probe-test",
        "--work-dir", tmp_path / "work",
    )  # fmt: skip

    assert code == 0, err
    assert (result["events"], result["encoding"]) == (50, "json") and result["events_per_s"] > 0
    messages = await subscriber.wait_for(lambda seen: len(seen) >= 50)
    assert {json.loads(m.payload)["id"] for m in messages} == {d.id for d in drafts}


async def test_drain_probe_refuses_a_bad_drafts_file_naming_the_line(tmp_path: Path) -> None:
    file = tmp_path / "drafts.jsonl"
    file.write_text('{"type": "meter.reading"}\n')

    code, _result, err = await _probe("drain", "--broker", "mqtt://127.0.0.1:1", "--drafts", file)

    assert code != 0
    assert "line 1: draft line: " in err and "Traceback" not in err


async def test_modbus_probe_describes_a_profile_without_a_meter() -> None:
    code, result, err = await _probe(
        "modbus", "--profile", "dtsu666", "--profiles-dir", PROFILES_DIR
    )

    assert code == 0, err
    assert (result["values"], result["requests_per_cycle"], result["registers_per_cycle"]) == (
        24,
        5,
        48,
    )
    assert result["min_bus_bytes_per_cycle"] == 5 * 13 + 2 * 48
    assert "values_per_s" not in result  # nothing was read


async def test_modbus_probe_reads_the_meter_with_the_plan_it_reports() -> None:
    profile = "dtsu666"
    meter = SimMeter("900000000001", SystemClock(), phases=3)
    line = ModbusLine([ModbusSimMeter(1, MAPS[PROFILE_MODELS[profile]], meter)])
    await line.start()
    try:
        code, result, err = await _probe(
            "modbus", "--profile", profile, "--profiles-dir", PROFILES_DIR,
            "--transport", f"modbus-tcp://127.0.0.1:{line.port}", "--cycles", 20,
            "--plan", "per-value",
        )  # fmt: skip
    finally:
        await line.close()

    assert code == 0, err
    assert result["requests_per_cycle"] == 24
    assert line.requests[1] == 24 * (1 + 20)  # one warm-up cycle, then the timed ones
    assert result["values_per_s"] > 0


async def test_locks_probe_refuses_a_config_without_locks(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(f'[gateway]\nid = "gw-1"\nstate_dir = "{tmp_path / "state"}"\n')

    code, _result, err = await _probe("locks", "-c", config, "--work-dir", tmp_path / "work")

    assert code != 0
    assert "ble.locks" in err and "Traceback" not in err
    assert not (tmp_path / "state").exists()  # the gateway's own state is never touched


def test_probe_without_a_name_prints_its_usage() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "probe"],
        cwd=REPO, env=marked_env(new_mark()), capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip

    assert done.returncode == 2
    assert "usage: sealgw probe" in done.stderr
