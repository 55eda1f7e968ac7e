"""The console's pages over HTTP, timed: `sealgw master serve` on a filled ledger, httpx asking.

`time_console` starts the console as production does (`python -m master_station serve`, its
own process, on a free loopback port), creates an admin and a district manager with the real
accounts code, signs each in through the login form, and asks every page in turn, round after
round: the first round is the warm-up (reported apart), the medians are of the rest. Every
answer must be 200 and show what the ledger holds (the sample alarm's id, its seal, its
gateway, its district), so a broken page is never timed as a fast one.

The sample is the newest open alarm about a seal; the manager's district is its gateway's,
so both users see the same alarm, seal and gateway.
"""

from __future__ import annotations

import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from master_station.console.accounts import Accounts
from master_station.ledger.models import Ledger

__all__ = ["PAGES", "Sample", "sample_of", "serve", "time_console"]

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "bench console password"
START_TIMEOUT_S = 180.0  # the server opens the ledger first (SQLite: its integrity check)
LIMIT_MS = 1000.0
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
Check = Callable[[httpx.Response], bool]


@dataclass(frozen=True, slots=True)
class Sample:
    """What the pages must show: an open alarm, its seal, gateway and district."""

    alarm_id: str
    gateway: str
    seal: str
    district: str


PAGES = ("districts", "alarms", "alarm", "seal", "work_orders", "trends", "api_trends",
         "api_summary")  # fmt: skip


def sample_of(ledger: Ledger) -> Sample:
    """The newest open alarm about a seal, with its gateway's district."""
    rows = ledger.db.query(  # type: ignore[attr-defined]
        "SELECT a.alarm_id, a.gateway, a.seal, g.district FROM console_alarms a JOIN"
        " console_gateways g ON g.gateway = a.gateway WHERE a.status = 'open' AND a.seal <> ''"
        " ORDER BY a.ts DESC, a.alarm_id LIMIT 1"
    )
    if not rows:
        raise RuntimeError("the ledger's rollups hold no open alarm about a seal")
    return Sample(*(str(v) for v in rows[0]))


def time_console(
    ledger: Ledger, target: str, work: Path, rounds: int, *, sample: Sample | None = None
) -> dict[str, Any]:
    """Median ms of each page per user over `rounds` (after a warm-up round), and the warm-up.

    `sample`: what the pages must show (by default `sample_of(ledger)`); RuntimeError when a
    page answers otherwise."""
    sample = sample or sample_of(ledger)
    accounts = Accounts(ledger.db)  # type: ignore[attr-defined]
    users = {
        "admin": ("bench-admin", "admin", []),
        "district_manager": ("bench-manager", "district_manager", [sample.district]),
    }
    for name, role, districts in users.values():
        accounts.add(name, PASSWORD, role, districts)
    pages = _pages(sample)
    times: dict[str, dict[str, list[float]]] = {u: {p: [] for p in pages} for u in users}
    with serve(target, work) as base:
        clients = {user: _signed_in(base, name) for user, (name, _r, _d) in users.items()}
        try:
            for _ in range(rounds + 1):
                for user, client in clients.items():
                    for page, (path, check) in pages.items():
                        times[user][page].append(_get(client, page, path, check))
        finally:
            for client in clients.values():
                client.close()
    medians = {u: {p: _ms(statistics.median(t[1:])) for p, t in per.items()}
               for u, per in times.items()}  # fmt: skip
    first = {u: {p: _ms(t[0]) for p, t in per.items()} for u, per in times.items()}
    slowest = max(v for per in medians.values() for v in per.values())
    return {"sample": {"alarm": sample.alarm_id, "gateway": sample.gateway, "seal": sample.seal,
                       "district": sample.district},
            "rounds": rounds, **medians, "first_request": first, "slowest_ms": slowest,
            "pages_under_1s": slowest < LIMIT_MS}  # fmt: skip


@contextmanager
def serve(target: str, work: Path) -> Iterator[str]:
    """`python -m master_station serve` on `target`, plain HTTP on loopback; yield its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    log = (work / f"console-{port}.log").open("wb")
    argv = [sys.executable, "-m", "master_station", "serve", "--ledger", target,
            "--host", "127.0.0.1", "--port", str(port), "--plain-http"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_up(proc, base, work / f"console-{port}.log")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _pages(s: Sample) -> dict[str, tuple[str, Check]]:
    """page name → (path, what its answer must hold)."""
    seal_path = f"/seals/{quote(s.gateway, safe='')}/{quote(s.seal, safe='')}"
    return {
        "districts": ("/districts", lambda r: f'data-seal="{s.seal}" data-gateway="{s.gateway}"'
                      in r.text and f'data-district="{s.district}"' in r.text),
        "alarms": ("/alarms", lambda r: f'data-alarm-id="{s.alarm_id}"' in r.text),
        "alarm": (f"/alarms/{quote(s.alarm_id, safe='')}",
                  lambda r: f'data-testid="alarm-detail" data-alarm-id="{s.alarm_id}"' in r.text
                  and f"{seal_path}\"" in r.text),
        "seal": (seal_path, lambda r: f'data-seal="{s.seal}" data-gateway="{s.gateway}"' in r.text
                 and f'data-alarm-id="{s.alarm_id}"' in r.text),
        "work_orders": ("/work-orders", lambda r: f"<option>{s.gateway}</option>" in r.text),
        "trends": ("/trends", lambda r: 'data-src="/api/trends?days=30"' in r.text),
        "api_trends": ("/api/trends", lambda r: _trend_has_events(r.json(), s.district)),
        "api_summary": ("/api/summary",
                        lambda r: r.json()["open_alarms_by_district"].get(s.district, 0) > 0),
    }  # fmt: skip


def _wait_up(proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the console exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the console did not answer in {START_TIMEOUT_S:.0f} s")
        time.sleep(0.1)


def _signed_in(base: str, username: str) -> httpx.Client:
    """A client signed in through the login form (its pre-login CSRF cookie and token)."""
    client = httpx.Client(base_url=base, follow_redirects=False, timeout=60)
    form = client.get("/login")
    token = _CSRF.search(form.text)
    if form.status_code != 200 or token is None:
        raise RuntimeError(f"no login form: {form.status_code}")
    answer = client.post("/login", data={"username": username, "password": PASSWORD,
                                         "csrf_token": token.group(1)})  # fmt: skip
    if answer.status_code != 303 or answer.headers.get("location") != "/districts":
        raise RuntimeError(f"{username} was not signed in: {answer.status_code}")
    return client


def _get(client: httpx.Client, page: str, path: str, check: Check) -> float:
    """Seconds for one GET, after checking its answer."""
    start = time.perf_counter()
    answer = client.get(path)
    elapsed = time.perf_counter() - start
    if answer.status_code != 200 or not check(answer):
        raise RuntimeError(f"page {page} ({path}): {answer.status_code}, not the expected content")
    return elapsed


def _trend_has_events(body: dict[str, Any], district: str) -> bool:
    series = body.get("districts", {}).get(district)
    return bool(series) and any(n for n in series["events"] if n)


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 1)
