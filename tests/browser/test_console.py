"""The console as a district manager uses it, in Debian's Chromium, over a live district.

One stack for the module (tests/fixtures/district.py, live_console.py): Mosquitto, `sealgw sim`
(6 locks, its meters), `sealgw run` (gateway gw-north-01, district d-north), `sealgw master
listen` and `sealgw master serve` beside it over HTTPS. A second district, d-south, has a
gateway whose hash-chained events this module publishes itself (gw-south-01, one tamper), so
the south manager has alarms of their own and scoping is seen to filter, not to show nothing.

The manager of d-north logs in; a tamper injected into the simulator appears in the open alarm
inbox without a reload (server-sent events); its evidence page shows the events around it, the
lock's log entries and the seal; acknowledging and closing it (with a note) is recorded and the
open-alarms KPI drops by one; a ticket issued from the work-order form is accepted by the
gateway. The manager of d-south sees none of it. The same tests draw the README's pictures
(docs/img) when SEALGW_SCREENSHOTS is set (`make screenshots`).

Every wait is Playwright's `expect(...)` or a ledger condition, each with a deadline.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.fixtures.browser import VIEWPORT, Screenshots
from tests.fixtures.district import District, live_district
from tests.fixtures.live_console import Account, publish_chain, start_console
from tests.fixtures.master import ChainBuilder

NORTH, SOUTH = "d-north", "d-south"
NORTH_GW, SOUTH_GW = "gw-north-01", "gw-south-01"
MANAGER_N = Account("li.wei", "district_manager", (NORTH,))
MANAGER_S = Account("zhao.min", "district_manager", (SOUTH,))
TAMPERED = "SL-0002"  # the seal the morning's tamper is injected into
SEEN_S = 20_000  # ms: a page, a live row, a KPI (SSE polls every second; the gateway is local)
REPLY_S = 30_000  # ms: a ticket's round trip through the broker to the gateway and back


@dataclass
class Stack:
    district: District
    url: str
    south: ChainBuilder  # gw-south-01's chain so far (a test publishes more of it)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("console")
    with live_district(work, gateway_id=NORTH_GW, district=NORTH, locks=6) as district:
        url = start_console(district, [MANAGER_N, MANAGER_S])
        south = _south_district()
        publish_chain(district.broker, south.events)
        district.wait(
            "the south gateway's tamper in the console's alarms",
            lambda: district.query(
                "SELECT alarm_id FROM console_alarms WHERE gateway = ? AND type = 'seal.tamper'",
                (SOUTH_GW,),
            ),
        )
        yield Stack(district, url, south)


def _south_district() -> ChainBuilder:
    """gw-south-01 in d-south: started today, one seal tampered with."""
    south = ChainBuilder(SOUTH_GW, datetime.now(UTC).replace(microsecond=0))
    south.add("gateway.started", data={"district": SOUTH, "version": "0.1.0"})
    south.add("seal.tamper", "SL-S001", {"source": "advert", "state": "tampered", "flags": 1})
    return south


Contexts = Callable[..., BrowserContext]


@pytest.fixture
def contexts(browser: Browser) -> Iterator[Contexts]:
    """Fresh browser profiles (cookies, storage), one per person: a laptop screen, English
    unless another `locale` is given; the console's self-signed certificate is accepted."""
    made: list[BrowserContext] = []

    def new(locale: str = "en-US") -> BrowserContext:
        ctx = browser.new_context(viewport=VIEWPORT, locale=locale, ignore_https_errors=True)
        ctx.set_default_timeout(SEEN_S)
        made.append(ctx)
        return ctx

    try:
        yield new
    finally:
        for ctx in made:
            ctx.close()


@pytest.fixture
def context(contexts: Contexts) -> BrowserContext:
    return contexts()


def log_in(context: BrowserContext, stack: Stack, account: Account) -> Page:
    """Sign in through the login form; the districts page is where a manager lands."""
    page = context.new_page()
    page.goto(f"{stack.url}/login")
    page.get_by_test_id("login-username").fill(account.username)
    page.get_by_test_id("login-password").fill(account.password)
    page.get_by_test_id("login-submit").click()
    expect(page).to_have_url(f"{stack.url}/districts")
    expect(page.get_by_test_id("current-user")).to_have_attribute(
        "data-districts", ",".join(account.districts)
    )
    return page


# -- the morning of the d-north manager ---------------------------------------------------------


def test_manager_logs_in_and_sees_only_their_district(
    stack: Stack, context: BrowserContext
) -> None:
    page = log_in(context, stack, MANAGER_N)
    cards = page.get_by_test_id("district-card")
    expect(cards).to_have_count(1)
    expect(cards.first).to_have_attribute("data-district", NORTH)
    cells = page.locator(f'[data-testid="seal-grid"][data-district="{NORTH}"] '
                         '[data-testid="seal-cell"]')  # fmt: skip
    expect(cells).to_have_count(stack.district.locks)
    expect(page.get_by_test_id("kpi-gateway-online")).to_have_attribute("data-target", "0.96")


def test_tamper_appears_live_then_evidence_acknowledge_close_and_the_kpi_drops(
    stack: Stack, context: BrowserContext, contexts: Contexts, screenshots: Screenshots
) -> None:
    district = stack.district
    page = log_in(context, stack, MANAGER_N)
    south = log_in(contexts(), stack, MANAGER_S)  # the other district's manager, also watching

    # Both inboxes open and listening before anything happened.
    for inbox in (page, south):
        inbox.get_by_test_id("nav-alarms").click()
        expect(inbox.get_by_test_id("alarms-live")).to_have_attribute("data-state", "open")
        inbox.evaluate("window.sealgwNoReload = true")  # gone if the page were reloaded
    rows = page.locator(f'[data-testid="alarm-row"][data-seal="{TAMPERED}"]')
    expect(rows).to_have_count(0)

    district.inject(f"lock {TAMPERED} tamper")
    tamper = rows.and_(page.locator('[data-type="seal.tamper"]')).first
    expect(tamper).to_have_attribute("data-status", "open")
    assert page.evaluate("window.sealgwNoReload") is True, "the inbox reloaded"
    alarm_id = tamper.get_attribute("data-alarm-id") or ""

    # A later tamper in d-south reaches the south inbox live; d-north's never did.
    stack.south.add("seal.tamper", "SL-S002", {"source": "advert", "state": "tampered"})
    publish_chain(district.broker, stack.south.events[-1:])
    expect(south.locator('[data-testid="alarm-row"][data-seal="SL-S002"]')).to_have_count(1)
    expect(south.locator(f'[data-testid="alarm-row"][data-district="{NORTH}"]')).to_have_count(0)
    assert south.evaluate("window.sealgwNoReload") is True, "the south inbox reloaded"
    # One forced shell is told twice (the advert's flag, then the lock's log entry): wait for
    # both, and for the listener's rollups to have folded them, so the KPI below counts a
    # settled district.
    district.wait("the lock's own tamper entry in the ledger", lambda: len(
        [e for e in district.events("seal.tamper") if e["subject"] == TAMPERED]) >= 2)  # fmt: skip
    _wait_rolled_up(district, NORTH_GW)
    # Told twice, one alarm: the inbox's row, updated live, counts both events.
    expect(rows.and_(page.locator('[data-type="seal.tamper"]'))).to_have_count(1)
    expect(tamper).to_have_attribute("data-events", "2")

    # The districts page in a second tab: the open-alarms KPI with the tamper counted.
    kpi_page = context.new_page()
    kpi_page.goto(f"{stack.url}/districts")
    kpi = kpi_page.locator(f'[data-testid="kpi-open-alarms"][data-district="{NORTH}"]')
    expect(kpi).to_have_attribute("data-value", str(_open_alarms(district, NORTH_GW)))
    raised = int(kpi.get_attribute("data-value") or "")
    assert raised >= 1, "the tamper is an open alarm"
    kpi_page.evaluate("window.sealgwNoReload = true")

    # Its evidence: both events of the incident, the events around it (the tamper
    # highlighted), the lock's log entries.
    page.locator(f'[data-alarm-id="{alarm_id}"] [data-testid="alarm-link"]').click()
    detail = page.get_by_test_id("alarm-detail")
    expect(detail).to_have_attribute("data-alarm-id", alarm_id)
    expect(detail).to_have_attribute("data-status", "open")
    told = page.get_by_test_id("evidence-incident").get_by_test_id("event-row")
    expect(told).to_have_count(2)
    for i in range(2):
        expect(told.nth(i)).to_have_attribute("data-type", "seal.tamper")
    around = page.get_by_test_id("evidence-around")
    expect(around.locator("tr.highlight")).to_have_attribute("data-type", "seal.tamper")
    expect(around.locator("tr.highlight").get_by_test_id("chain-status")).to_have_attribute(
        "data-chain", re.compile(r"^(verified|gap)$")
    )
    entries = page.get_by_test_id("evidence-lock-entries").get_by_test_id("lock-entry-row")
    expect(entries.first).to_be_visible()
    expect(page.get_by_test_id("alarm-seal-link")).to_have_attribute(
        "href", f"/seals/{district.gateway_id}/{TAMPERED}"
    )
    screenshots.take(page, "console-alarm-evidence")

    # Acknowledge, then close with a note: both in the alarm's audit trail, with who.
    page.get_by_test_id("ack-note").fill("on my way to the box")
    page.get_by_test_id("ack-submit").click()
    expect(detail).to_have_attribute("data-status", "acknowledged")
    page.get_by_test_id("close-note").fill("shell forced; box resealed under WO-2001")
    page.get_by_test_id("close-submit").click()
    expect(detail).to_have_attribute("data-status", "closed")
    audit = page.get_by_test_id("alarm-audit").get_by_test_id("audit-row")
    expect(audit).to_have_count(2)
    for action in ("acknowledged", "closed"):
        row = audit.and_(page.locator(f'[data-action="{action}"]'))
        expect(row).to_have_attribute("data-actor", MANAGER_N.username)
    recorded = district.query(
        "SELECT actor, action FROM console_audit WHERE target = ? ORDER BY at",
        (f"alarm:{alarm_id}",),
    )
    assert recorded == [(MANAGER_N.username, "acknowledged"), (MANAGER_N.username, "closed")]
    still_open = district.query(
        "SELECT alarm_id FROM console_alarms WHERE gateway = ? AND seal = ? AND status != 'closed'",
        (NORTH_GW, TAMPERED),
    )
    assert still_open == [], "one close closes the incident, both of its events"

    # The KPI in the other tab drops by one, live; a fresh districts page agrees.
    expect(kpi).to_have_attribute("data-value", str(raised - 1))
    assert kpi_page.evaluate("window.sealgwNoReload") is True, "the districts page reloaded"
    page.get_by_test_id("nav-districts").click()
    tile = page.locator(f'[data-testid="kpi-open-alarms"][data-district="{NORTH}"]')
    expect(tile).to_have_attribute("data-value", str(raised - 1))
    cell = page.locator(f'[data-testid="seal-cell"][data-seal="{TAMPERED}"]')
    expect(cell).to_have_attribute("data-condition", "tampered")
    screenshots.take(page, "console-districts")


def test_a_ticket_issued_from_the_console_is_accepted_by_the_gateway(
    stack: Stack, context: BrowserContext
) -> None:
    page = log_in(context, stack, MANAGER_N)
    page.get_by_test_id("nav-work-orders").click()
    expect(page.get_by_test_id("role-rules").get_by_test_id("role-rule").first).to_be_visible()
    form = page.get_by_test_id("ticket-form")
    form.get_by_test_id("ticket-gateway").select_option(NORTH_GW)
    form.get_by_test_id("ticket-work-order").fill("WO-2001")
    form.get_by_test_id("ticket-flow").select_option("meter_replace")
    form.get_by_test_id("ticket-operator").fill("op-inst-01")
    form.get_by_test_id("ticket-role").select_option("meter_installer")
    form.get_by_test_id("ticket-seals").fill(TAMPERED)
    form.get_by_test_id("ticket-submit").click()

    result = page.get_by_test_id("ticket-result")
    expect(result).to_have_attribute("data-status", "accepted", timeout=REPLY_S)
    ticket_id = result.get_attribute("data-ticket-id") or ""
    row = page.locator(f'[data-testid="ticket-row"][data-ticket-id="{ticket_id}"]')
    expect(row).to_have_attribute("data-status", "accepted")
    expect(row).to_have_attribute("data-work-order", "WO-2001")
    expect(row.get_by_test_id("ticket-answer")).to_have_attribute("data-reason", "stored")
    reply = stack.district.query(
        "SELECT status, reply FROM console_tickets WHERE ticket_id = ?", (ticket_id,)
    )
    assert reply and reply[0][0] == "accepted", reply
    assert json.loads(reply[0][1]).get("ok") is True, reply


def test_the_browsers_language_chooses_chinese_and_the_switch_english(
    stack: Stack, contexts: Contexts, screenshots: Screenshots
) -> None:
    page = contexts(locale="zh-CN").new_page()
    page.goto(f"{stack.url}/login")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    page.get_by_test_id("login-username").fill(MANAGER_N.username)
    page.get_by_test_id("login-password").fill(MANAGER_N.password)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("nav-districts")).to_have_text("台区")
    expect(page.get_by_test_id("district-card")).to_have_count(1)
    screenshots.take(page, "console-districts-zh")

    page.get_by_test_id("lang-switch").click()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page).to_have_url(f"{stack.url}/districts")
    page.get_by_test_id("nav-alarms").click()
    expect(page.get_by_test_id("nav-districts")).to_have_text("Districts")  # the choice stays


# -- the d-south manager sees none of it ----------------------------------------------------------


def test_a_manager_of_another_district_sees_none_of_it(
    stack: Stack, context: BrowserContext
) -> None:
    district = stack.district
    north_alarms = [r[0] for r in district.query(
        "SELECT alarm_id FROM console_alarms WHERE gateway = ?", (NORTH_GW,))]  # fmt: skip
    north_tickets = [r[0] for r in district.query(
        "SELECT ticket_id FROM console_tickets WHERE gateway = ?", (NORTH_GW,))]  # fmt: skip
    assert north_alarms, "d-north has alarms (the tests before raised them)"

    page = log_in(context, stack, MANAGER_S)
    cards = page.get_by_test_id("district-card")
    expect(cards).to_have_count(1)
    expect(cards.first).to_have_attribute("data-district", SOUTH)
    expect(page.locator(f'[data-testid="seal-cell"][data-gateway="{NORTH_GW}"]')).to_have_count(0)

    # The inbox: their own tamper, nothing of d-north, live or not.
    page.get_by_test_id("nav-alarms").click()
    expect(page.locator('[data-testid="alarm-row"][data-seal="SL-S001"]')).to_have_count(1)
    expect(page.locator(f'[data-testid="alarm-row"][data-district="{NORTH}"]')).to_have_count(0)
    page.goto(f"{stack.url}/alarms?status=closed")
    expect(page.get_by_test_id("alarm-table")).to_have_attribute("data-status", "closed")
    expect(page.locator(f'[data-testid="alarm-row"][data-district="{NORTH}"]')).to_have_count(0)

    # d-north's pages, asked for by URL: refused, and nothing of them shown.
    for alarm_id in north_alarms:
        response = page.goto(f"{stack.url}/alarms/{alarm_id}")
        assert response is not None and response.status in (403, 404), alarm_id
        expect(page.get_by_test_id("alarm-detail")).to_have_count(0)
    response = page.goto(f"{stack.url}/seals/{NORTH_GW}/{TAMPERED}")
    assert response is not None and response.status in (403, 404)
    expect(page.get_by_test_id("seal-detail")).to_have_count(0)

    # Work orders: d-north's gateway is not offered, its tickets are not listed.
    page.goto(f"{stack.url}/work-orders")
    options = page.get_by_test_id("ticket-gateway").locator("option")
    expect(options.filter(has_text=NORTH_GW)).to_have_count(0)
    for ticket_id in north_tickets:
        expect(page.locator(f'[data-ticket-id="{ticket_id}"]')).to_have_count(0)

    # The open-alarm counts it is sent are its own district's only.
    summary = page.evaluate(
        "fetch('/api/summary', {credentials: 'same-origin'}).then(r => r.json())"
    )
    assert set(summary["open_alarms_by_district"]) <= {SOUTH}, summary


# -- helpers --------------------------------------------------------------------------------------


def _wait_rolled_up(district: District, gateway: str) -> None:
    """Until the rollups (console_alarms with them) folded every event the ledger holds now."""
    held = district.query("SELECT count(*) FROM events WHERE gateway = ?", (gateway,))[0][0]

    def folded() -> bool:
        rows = district.query(
            "SELECT value FROM rollup_meta WHERE name = ?", (f"events:{gateway}",)
        )
        return bool(rows) and int(rows[0][0]) >= int(held)

    district.wait(f"the rollups folded {held} events of {gateway}", folded)


def _open_alarms(district: District, gateway: str) -> int:
    """Alarms of `gateway` not closed (open or acknowledged), as the ledger holds them."""
    rows = district.query(
        "SELECT count(*) FROM console_alarms WHERE gateway = ? AND status != 'closed'", (gateway,)
    )
    return int(rows[0][0]) if rows else 0
