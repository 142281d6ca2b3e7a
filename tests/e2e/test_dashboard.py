"""The dashboard (``/``), driven in real headless Chromium.

Against a real ``keel serve`` whose store holds a week of calls (written before it
starts) plus live calls made through the feature API, every page must show what the API
answers for the same query. Against a made-up API (:class:`MockApi`, through request
interception) the charts' behaviour is checked on fixed data: tooltips, keyboard, a
canary's steps, the drift heatmap, an error and a route this Keel lacks.

Each page is screenshotted into a temporary directory (``KEEL_SCREENSHOTS`` keeps them);
``KEEL_DASHBOARD_DOCS=1`` also copies the real server's ones to ``docs/img/``. Fails
(never skips) when Chromium or Playwright is missing: see ``tests/e2e/browser.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from keel.server import errors, pages
from keel.testing import FakeUpstream
from tests.backends import store_at
from tests.e2e.browser import BrowserMissing, headless_chromium
from tests.e2e.dashboard_data import MockApi, history, seed
from tests.e2e.server import KeelProcess, free_port
from tests.e2e.test_review_page import assert_real_png

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

STATIC = Path(pages.__file__).parent / "static"
DOCS_IMG = Path(__file__).parents[2] / "docs" / "img"
WIDTH = 1280

# --- how the page is served (in process) ------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = FastAPI()
    errors.install(app)
    app.include_router(pages.router)
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("path", ["/", "/dashboard", "/dashboard/", "/dashboard/events"])
def test_the_dashboard_is_served_at_the_root_and_under_dashboard(client: TestClient,
                                                                 path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp
    assert '<script type="module" src="/static/dashboard.js">' in r.text


def _imports(js: str) -> list[str]:
    return re.findall(r"""^import\s[^;]*?from\s+"\./([^"]+)";""", js, re.MULTILINE | re.DOTALL)


def test_the_dashboard_loads_only_its_own_files(client: TestClient) -> None:
    html = client.get("/").text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "no CDN, no remote assets"
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "no inline scripts"
    assert "<style" not in html and " style=" not in html, "no inline styles"
    seen: set[str] = set()
    todo = re.findall(r"""(?:src|href)="/static/([^"]+)\"""", html)
    assert sorted(todo) == ["dashboard.css", "dashboard.js"]
    while todo:  # every module the entry point imports, transitively, is served
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        r = client.get(f"/static/{name}")
        assert r.status_code == 200, name
        if name.endswith(".js"):
            assert r.headers["content-type"] == "text/javascript; charset=utf-8"
            assert not re.search(r"""(from|import\()\s*["'](https?:)?//""", r.text), name
            assert "innerHTML" not in r.text and "eval(" not in r.text, name
            todo += _imports(r.text)
        else:
            assert "url(" not in r.text, name
    assert {"api.js", "charts.js", "format.js", "dom.js", "dashboard-overview.js",
            "dashboard-feature.js", "dashboard-events.js", "dashboard-budgets.js",
            "dashboard-reviews.js"} <= seen
    shipped = {p.name for p in STATIC.iterdir() if p.name.startswith("dashboard")}
    assert shipped - {"dashboard.html"} <= seen, "every dashboard module is reachable"


# --- a real server with a week of calls ---------------------------------------------------

CONFIG = """
providers:
  fake: {{type: openai, base_url: "{url}", timeout_s: 5}}
  dead: {{type: openai, base_url: "http://127.0.0.1:{dead}", timeout_s: 1, connect_timeout_s: 1}}
features:
  triage:
    description: Route a banking customer's message to an intent.
    output: {{kind: label, labels: [card_arrival, exchange_rate, other]}}
    versions:
      mini-2: {{provider: fake, model: fake-model, params: {{logprobs: true}},
               price: {{input: 150, output: 600}}}}
    aliases: {{champion: mini-2}}
    validators:
      - {{type: allowed_labels, on_fail: review}}
    slo: {{error_rate: 0.05, latency_p95_ms: 400, review_rate: 0.2}}
  reply:
    description: Draft a reply to a support ticket.
    output: {{kind: text}}
    versions:
      r1: {{provider: fake, model: fake-model, price: {{input: 300, output: 1200}}}}
    aliases: {{champion: r1}}
  ticket:
    output: {{kind: json}}
    versions:
      v1: {{provider: dead, model: fake-model}}
    aliases: {{champion: v1}}
    retry: {{max_retries: 0}}
budgets:
  - {{name: everyone, scope: all, period: month, limit_usd: 20}}
  - {{name: reply-daily, scope: feature, match: reply, period: day, limit_usd: 1}}
throttles:
  - {{name: per-user, scope: user, requests_per_minute: 600}}
"""

ANSWERS = {"has not arrived": "card_arrival", "exchange rate": "exchange_rate",
           "raise my limit": "credit_limit"}  # not an allowed label: review
LIVE = [("triage", "my card has not arrived", "ana"), ("triage", "my card has not arrived", "bob"),
        ("triage", "which exchange rate do you use", "ana"), ("triage", "raise my limit", "bob"),
        ("triage", "raise my limit please", "ana"), ("reply", "where is my refund", "cy"),
        ("ticket", "card never came", "cy"), ("ticket", "card never came again", "cy")]


def _reply(body: dict[str, Any]) -> str:
    text = str(body["messages"][-1]["content"])
    return next((label for phrase, label in ANSWERS.items() if phrase in text), "other")


class Server:
    def __init__(self, proc: KeelProcess, traces: dict[str, str], recorded: int) -> None:
        self.proc = proc
        self.url = proc.base_url
        self.traces = traces  # text -> trace id of the live calls
        self.recorded = recorded

    def get(self, path_and_query: str) -> Any:
        r = httpx.get(f"{self.url}{path_and_query}", timeout=10)
        assert r.status_code == 200, (path_and_query, r.text)
        return r.json()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("dashboard")
    events = history(time.time())
    seed(tmp / "keel.db", events)
    with FakeUpstream(reply=_reply) as upstream:
        config = tmp / "keel.yaml"
        config.write_text(CONFIG.format(url=upstream.base_url, dead=free_port()))
        with KeelProcess(config, tmp / "keel.db") as proc:
            # a canary of a second version, forced past the eval gate
            spec = {"provider": "fake", "model": "fake-model", "params": {"logprobs": True},
                    "price": {"input": 120, "output": 480}}
            r = httpx.post(f"{proc.base_url}/api/features/triage/versions",
                           json={"name": "mini-3", "spec": spec})
            assert r.status_code == 201, r.text
            r = httpx.post(f"{proc.base_url}/api/features/triage/rollout",
                           json={"version": "mini-3", "force": True, "steps": [0.05, 0.25, 1.0]})
            assert r.status_code == 201, r.text
            traces = {}
            for feature, text, user in LIVE:
                r = httpx.post(f"{proc.base_url}/v1/features/{feature}",
                               json={"input": {"text": text}, "user": user}, timeout=30)
                assert r.status_code == (502 if feature == "ticket" else 200), r.text
                traces[text] = r.json().get("trace_id")
            total = len(events) + len(LIVE)
            store = store_at(tmp / "keel.db")
            deadline = time.monotonic() + 10
            while store.count_events() < total and time.monotonic() < deadline:
                time.sleep(0.05)  # events are written off the hot path, in batches
            assert store.count_events() == total
            # one of the two items in the review queue gets a verdict
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                items = httpx.get(f"{proc.base_url}/api/reviews").json()["items"]
                if len(items) == 2:
                    break
                time.sleep(0.05)
            item = httpx.post(f"{proc.base_url}/api/reviews/next", json={"reviewer": "ana"}).json()
            r = httpx.post(f"{proc.base_url}/api/reviews/{item['trace_id']}/verdict",
                           json={"reviewer": "ana", "verdict": "approve"})
            assert r.status_code == 200, r.text
            yield Server(proc, traces, total)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    try:
        with headless_chromium(tmp_path / "chromium-profile", width=WIDTH) as context:
            yield context
    except BrowserMissing as exc:
        pytest.fail(f"the dashboard test needs a browser: {exc}", pytrace=False)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    path = Path(os.environ.get("KEEL_SCREENSHOTS") or tmp_path / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


class Tab:
    """A page that records the API requests it makes and fails on script errors."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.requests: list[str] = []
        self.crashes: list[str] = []
        page.on("pageerror", lambda exc: self.crashes.append(str(exc)))
        page.on("console", lambda m: self.crashes.append(m.text) if m.type == "error"
                and "Content Security Policy" in m.text else None)
        page.on("request", lambda r: self.requests.append(r.url) if "/api/" in r.url else None)

    def open(self, url: str) -> Tab:
        """Go to a page of the dashboard and wait until every panel has loaded."""
        self.page.goto(url)
        path = "/" + url.split("#/", 1)[1].split("?")[0] if "#/" in url else "/"
        self.page.wait_for_selector(f"main[data-route='{path.rstrip('/') or '/'}'][data-ready]",
                                    state="attached")
        self.settle()
        return self

    def settle(self) -> None:
        """Wait until no panel is loading."""
        self.page.wait_for_function(
            "() => document.querySelector('main[data-ready]') && !document.querySelector('.state-loading')")

    def request(self, path: str) -> str:
        """The last request the page made to ``path`` (path and query)."""
        found = [u for u in self.requests if httpx.URL(u).path == path]
        assert found, f"the page never asked for {path}: {self.requests}"
        url = httpx.URL(found[-1])
        return f"{url.path}?{url.query.decode()}" if url.query else url.path

    def text(self, selector: str) -> str:
        return self.page.inner_text(selector).strip()

    def shot(self, path: Path, full_page: bool = True) -> Path:
        if full_page:  # from the top, or the sticky bar lands mid-picture
            self.page.evaluate("() => window.scrollTo(0, 0)")
        self.page.screenshot(path=path, full_page=full_page)
        assert not self.crashes, self.crashes
        return path


def keep_for_docs(*paths: Path) -> None:
    """``KEEL_DASHBOARD_DOCS=1``: the screenshots become docs/img/dashboard-<name>.png."""
    if os.environ.get("KEEL_DASHBOARD_DOCS") == "1":
        for path in paths:
            shutil.copyfile(path, DOCS_IMG / f"dashboard-{path.name}")


def n(value: int) -> str:
    return f"{value:,}"


def test_the_overview_shows_what_the_api_says(server: Server, browser: BrowserContext,
                                              shots: Path) -> None:
    tab = Tab(browser.new_page()).open(f"{server.url}/#/")
    data = server.get(tab.request("/api/stats/overview"))
    totals = data["totals"]
    assert totals["calls"] > len(LIVE)
    assert tab.text("[data-kpi=kpi-calls]") == n(totals["calls"])
    assert tab.text("[data-kpi=kpi-errors]") == f"{round(totals['errors'] / totals['calls'] * 100, 1):g}%"
    # one bar per (bucket, decision) that happened; the legend sums them
    bars = sum(1 for s in data["series"] for v in s["decisions"].values() if v > 0)
    calls_chart = tab.page.locator("[data-chart=stacked]").first
    assert calls_chart.locator("rect.bar").count() == bars > 0
    legend = calls_chart.locator(".chart-legend").inner_text()
    for decision, count in totals["decisions"].items():
        if count:
            assert f"{decision}\n{n(count)}" in legend or f"{decision} {n(count)}" in legend
    assert tab.page.locator("[data-chart=line] path.line").count() == 2  # p50 and p95
    # cost per day: a bar per day with a cost
    costs = server.get(tab.request("/api/stats/costs"))
    cost_bars = tab.page.locator("[data-chart=stacked]").nth(1).locator("rect.bar")
    assert cost_bars.count() == sum(1 for r in costs["rows"] if r["cost_usd"] > 0) > 1
    # every feature, with its calls, linking to its page
    for row in data["features"]:
        link = tab.page.locator(f"a[data-feature={row['name']}]")
        assert link.get_attribute("href") == f"#/features/{row['name']}"
        cells = link.locator("xpath=ancestor::tr").inner_text()
        assert n(row["calls"]) in cells

    # hover: a tooltip with the bucket's total; keyboard: the same, and spoken
    box = calls_chart.locator("rect.bar").last.bounding_box()
    assert box is not None
    tab.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 2)
    tip = calls_chart.locator(".chart-tip")
    assert tip.is_visible() and "total" in tip.inner_text()
    calls_chart.locator(".chart-plot").focus()
    tab.page.keyboard.press("End")
    assert tip.is_visible()
    assert "total" in calls_chart.locator("[aria-live]").inner_text()
    assert calls_chart.locator("svg").get_attribute("role") == "img"
    assert calls_chart.locator("details.chart-data table tbody tr").count() == len(data["series"])

    # 7 days: new numbers from a new query
    tab.page.click("[data-range='7d']")
    tab.page.wait_for_function("() => document.querySelector('[data-range=\"7d\"]').getAttribute('aria-checked') === 'true'")
    tab.settle()
    week = server.get(tab.request("/api/stats/overview"))
    assert "bucket=hour" in tab.request("/api/stats/overview")
    assert tab.text("[data-kpi=kpi-calls]") == n(week["totals"]["calls"])
    assert week["totals"]["calls"] > totals["calls"]
    keep_for_docs(assert_png(tab.shot(shots / "overview.png")))


def assert_png(path: Path) -> Path:
    assert_real_png(path, WIDTH)
    return path


def test_a_feature_page_shows_versions_rollout_slos_and_review_load(
        server: Server, browser: BrowserContext, shots: Path) -> None:
    tab = Tab(browser.new_page()).open(f"{server.url}/#/features/triage")
    assert tab.text("h1") == "triage"
    stats = server.get(tab.request("/api/stats/features/triage"))
    assert tab.text("[data-kpi=kpi-calls]") == n(stats["totals"]["calls"])
    # versions and aliases, with each version's own numbers
    row = tab.page.locator("tr[data-version='mini-2']")
    assert "champion" in row.inner_text()
    version = next(v for v in stats["versions"] if v["version"] == "mini-2")
    assert n(version["calls"]) in row.inner_text()
    assert "champion" in tab.text("[data-alias=champion]")
    assert tab.page.locator("tr[data-version='mini-3']").count() == 1
    # the canary: its steps (the current one marked), both versions' live numbers
    rollout = server.get(tab.request("/api/features/triage/rollout"))["rollout"]
    steps = tab.page.locator(".steps li")
    assert steps.count() == len(rollout["steps"]) == 3
    assert steps.nth(rollout["step"]).get_attribute("aria-current") == "step"
    assert rollout["state"] in tab.text(".rollout-head") and "mini-3" in tab.text(".rollout-head")
    assert tab.page.locator(".table-transitions tbody tr").count() >= 1
    # SLOs: one card per objective the API judges
    slo = server.get(tab.request("/api/slo/triage"))
    objectives = slo.get("objectives") or slo.get("slos") or []
    assert tab.page.locator("[data-slo]").count() == len(objectives) == 3
    for objective in objectives:
        assert tab.page.locator(f"[data-slo='{objective.get('objective') or objective.get('name')}']").count() == 1
    # the review load: what waits, as /api/reviews/stats counts it
    queue = server.get(tab.request("/api/reviews/stats"))["features"][0]
    assert tab.text("[data-review=waiting]") == n(queue["pending"] + queue["in_progress"]) == "1"
    assert tab.text("[data-review=done]") == n(queue["done"]) == "1"
    assert tab.page.locator("[data-chart=bars] rect.bar[data-value='1']").count() == 1  # approved
    # drift: a heatmap, an empty state, or "not available" on a Keel without the route
    drift = tab.text("section:has(h2:text('Drift')) .panel-body")
    assert drift
    keep_for_docs(assert_png(tab.shot(shots / "feature.png")))


def test_the_events_explorer_filters_pages_and_opens_an_event(
        server: Server, browser: BrowserContext, shots: Path) -> None:
    tab = Tab(browser.new_page()).open(f"{server.url}/#/events?limit=20")
    rows = tab.page.locator("tr[data-trace]")
    first = server.get(tab.request("/api/events"))
    assert rows.count() == 20
    assert [rows.nth(i).get_attribute("data-trace") for i in range(20)] == \
        [e["trace_id"] for e in first["events"]]
    # "older" follows the cursor: the next 20, none repeated
    tab.page.click("#events-older")
    tab.page.wait_for_function("() => document.querySelectorAll('tr[data-trace]').length === 40")
    second = server.get(tab.request("/api/events"))
    assert "cursor=" in tab.request("/api/events")
    shown = [rows.nth(i).get_attribute("data-trace") for i in range(40)]
    assert shown == [e["trace_id"] for e in first["events"] + second["events"]]
    assert len(set(shown)) == 40

    # a decision narrows the list, and the address keeps the filter
    tab.page.select_option("#f-decision", "review")
    tab.page.wait_for_function("() => [...document.querySelectorAll('tr[data-trace]')].every(r => r.dataset.decision === 'review')")
    tab.settle()
    reviewed = server.get(tab.request("/api/events"))["events"]
    assert rows.count() == len(reviewed) > 0
    assert "decision=review" in tab.page.url
    tab.shot(shots / "events.png")
    # a trace id prefix finds one live call
    trace = server.traces["raise my limit"]
    tab.page.fill("#f-trace", trace[:10])
    tab.page.press("#f-trace", "Enter")
    tab.page.wait_for_function("() => document.querySelectorAll('tr[data-trace]').length === 1")
    assert rows.first.get_attribute("data-trace") == trace

    # the event in full: a waterfall of its stages, attempts, validations, input, output
    tab.page.click(f"button[data-trace='{trace}']")
    tab.page.wait_for_selector("#drawer[open] [data-chart=waterfall]")
    event = server.get(f"/api/events/{trace}")
    stages = [s for s in event["timings"] if s not in ("total", "first_token")]
    assert tab.page.locator("#drawer rect.wf-bar").count() >= len(stages) > 3
    drawer = tab.text("#drawer")
    assert "raise my limit" in drawer and "allowed_labels" in drawer and "credit_limit" in drawer
    assert event["version"] in drawer
    assert f"/events/{trace}" in tab.page.url
    assert_png(tab.shot(shots / "event.png", full_page=False))
    tab.page.keyboard.press("Escape")
    tab.page.wait_for_selector("#drawer", state="detached")
    assert tab.page.evaluate("document.activeElement.dataset.trace") == trace
    assert "/events/" not in tab.page.url
    # a deep link opens the drawer by itself
    tab.page.goto(f"{server.url}/#/events/{trace}")
    tab.page.wait_for_selector("#drawer[open] [data-chart=waterfall]")
    keep_for_docs(assert_png(shots / "events.png"), shots / "event.png")


def test_budgets_and_costs_show_the_ledger(server: Server, browser: BrowserContext,
                                           shots: Path) -> None:
    tab = Tab(browser.new_page()).open(f"{server.url}/#/budgets")
    budgets = server.get(tab.request("/api/budgets"))
    names = [b["name"] for b in budgets["budgets"]]
    assert sorted(names) == ["everyone", "reply-daily"]
    assert tab.page.locator("[data-budget]").count() == len(names)
    for b in budgets["budgets"]:
        card = tab.page.locator(f"[data-budget='{b['name']}']")
        assert b["state"] in card.inner_text()
        assert card.locator(".meter-mark").count() == 3  # 50, 80 and 100 %
    assert "per-user" in tab.text("section:has(h2:text('Throttles'))")
    # costs per feature, then per user
    costs = server.get(tab.request("/api/stats/costs"))
    assert tab.page.locator(".table-costs tbody tr").count() == len(costs["rows"]) > 1
    tab.page.click("[data-group=user]")
    tab.page.wait_for_function("() => document.querySelector('.table-costs thead th')?.textContent === 'User'")
    tab.settle()
    users = server.get(tab.request("/api/stats/costs"))
    assert "group=user" in tab.request("/api/stats/costs")
    assert tab.page.locator(".table-costs tbody tr").count() == len(users["rows"])
    assert tab.page.locator("[data-chart=bars] rect.bar").count() == min(15, len(users["rows"]))
    keep_for_docs(assert_png(tab.shot(shots / "budgets.png")))


def test_the_reviews_page_counts_the_queue(server: Server, browser: BrowserContext,
                                           shots: Path) -> None:
    tab = Tab(browser.new_page()).open(f"{server.url}/#/reviews")
    rows = server.get("/api/reviews/stats")["features"]
    waiting = sum(r["pending"] + r["in_progress"] for r in rows)
    assert waiting == 1  # two live calls went to review; one has a verdict
    assert tab.text("[data-kpi=kpi-waiting]") == n(waiting)
    assert tab.text("[data-kpi=kpi-done]") == "1"
    assert tab.page.locator("tr[data-feature]").count() == len(rows)
    assert tab.page.get_attribute("#open-review", "href") == "/review"
    assert tab.page.locator("nav a[href='/review']").count() == 1
    keep_for_docs(assert_png(tab.shot(shots / "reviews.png")))


def test_with_gateway_keys_the_dashboard_asks_for_one(server: Server, browser: BrowserContext,
                                                      tmp_path: Path, shots: Path) -> None:
    with KeelProcess(server.proc.config, tmp_path / "keys.db",
                     env={"KEEL_API_KEYS": "sk-dash"}) as keyed:
        tab = Tab(browser.new_page())
        tab.page.goto(f"{keyed.base_url}/#/")  # the page is public; its API is not
        tab.page.wait_for_selector("#key-dialog[open]")
        assert tab.page.evaluate("document.activeElement.id") == "key-input"
        assert "Missing API key" in tab.text("#key-reason")
        tab.page.fill("#key-input", "sk-wrong")
        tab.page.click("#key-submit")
        tab.page.wait_for_function("() => document.getElementById('key-error').textContent !== ''")
        assert "refused" in tab.text("#key-error")
        assert tab.page.get_attribute("#key-input", "aria-invalid") == "true"
        tab.page.fill("#key-input", "sk-dash")
        tab.page.keyboard.press("Enter")
        tab.page.wait_for_selector("#key-dialog", state="hidden")
        tab.settle()
        assert tab.page.locator("a[data-feature]").count() == 3
        assert tab.text("[data-kpi=kpi-calls]") == "0"
        assert "No calls in the last 24 hours" in tab.text("main")
        assert "keel call" in tab.text("main")  # what to do about it
        assert tab.page.evaluate("sessionStorage.getItem('keel.review.apiKey')") == "sk-dash"
        assert "sk-dash" not in str(tab.page.evaluate("JSON.stringify(localStorage)"))
        # without the key a panel says what the server said, and offers to ask again
        tab.page.evaluate("sessionStorage.clear()")
        tab.page.keyboard.press("r")
        tab.page.wait_for_selector("#key-dialog[open]")
        tab.page.click("#key-cancel")
        tab.settle()
        assert "Missing API key" in tab.text("#auth-alert")
        assert tab.text("#auth-code") == "invalid_api_key · HTTP 401"
        assert tab.page.locator("main .state-locked").count() == 5  # each panel points at it
        tab.page.locator("main").get_by_role("button", name="Enter the API key").first.click()
        tab.page.wait_for_selector("#key-dialog[open]")
        tab.page.click("#key-cancel")
        assert_png(tab.shot(shots / "key.png"))


def test_errors_from_keel_are_shown_with_its_message(server: Server,
                                                     browser: BrowserContext) -> None:
    tab = Tab(browser.new_page()).open(f"{server.url}/#/features/nope")
    assert "no feature named 'nope'" in tab.text("main")
    assert "feature_not_found · HTTP 404" in tab.text("main")
    tab.page.goto(f"{server.url}/#/events/0000dead")
    tab.page.wait_for_selector("#drawer[open] .state-error")
    assert "event_not_found" in tab.text("#drawer")
    assert "no event with trace id '0000dead'" in tab.text("#drawer")
    assert not tab.crashes, tab.crashes


# --- the charts on a month of made-up data ------------------------------------------------


@pytest.fixture
def mock(server: Server, browser: BrowserContext) -> Iterator[tuple[Tab, MockApi]]:
    api = MockApi(time.time())
    page = browser.new_page()
    page.route("**/api/**", api.handle)
    page.route("**/v1/features", api.handle)
    yield Tab(page), api


def test_charts_tooltips_and_states_on_made_up_data(server: Server, mock: tuple[Tab, MockApi],
                                                    shots: Path) -> None:
    tab, api = mock
    api.fail["/api/stats/overview"] = (500, {"error": {
        "code": "store_unavailable", "message": "database is locked", "type": "api_error", "param": None}})
    tab.open(f"{server.url}/#/?range=30d")
    # a failing API: its message and code, in each panel that needed it, and a retry
    kpis = tab.page.locator(".panel-kpis")
    assert "database is locked" in kpis.inner_text()
    assert "store_unavailable · HTTP 500" in kpis.inner_text()
    assert tab.page.locator("[data-chart=stacked] rect.bar").count() >= 30  # cost per day still works
    tab.shot(shots / "mock-error.png")
    del api.fail["/api/stats/overview"]
    kpis.get_by_role("button", name="Try again").click()
    tab.page.wait_for_selector(".panel-kpis [data-kpi=kpi-calls]")
    assert "bucket=day" in tab.request("/api/stats/overview")
    assert tab.text("[data-kpi=kpi-calls]") == n(api.answer("/api/stats/overview", {
        "since": str(time.time() - 30 * 86400), "bucket": "day"})[1]["totals"]["calls"])

    # the feature page: a canary's steps and transitions, SLOs, drift
    tab.open(f"{server.url}/#/features/triage")
    steps = tab.page.locator(".steps li")
    assert steps.count() == 5
    assert steps.nth(2).get_attribute("aria-current") == "step"
    assert tab.page.locator(".step-done").count() == 2
    assert tab.page.locator(".table-transitions tbody tr").count() == 3
    assert "page" in tab.text("[data-slo=error_rate]")
    assert "met" in tab.text("[data-slo=latency_p95_ms]")
    cells = tab.page.locator("[data-chart=heatmap] rect.cell")
    assert cells.count() == 4 * 14
    assert tab.page.locator("[data-chart=heatmap] rect.cell-bad").count() == 4
    heat = tab.page.locator("[data-chart=heatmap] .chart-plot")
    heat.focus()
    tab.page.keyboard.press("ArrowRight")
    tab.page.keyboard.press("ArrowDown")
    assert "input.language" in tab.text("[data-chart=heatmap] .chart-tip")
    tab.shot(shots / "mock-feature.png")

    # a route this Keel does not serve: said quietly, the rest of the page works
    api.fail["/api/drift/reply"] = (404, {"error": {
        "code": "not_found", "message": "Not Found", "type": "not_found_error", "param": None}})
    tab.open(f"{server.url}/#/features/reply")
    assert "Drift: not available" in tab.text("main")
    # no rollout yet: the API's 404 rollout_not_found, said plainly
    assert "No rollout yet" in tab.text("main") and "has had no rollout" in tab.text("main")

    # budgets: three states, marks, alerts
    tab.open(f"{server.url}/#/budgets")
    assert [tab.text(f"[data-budget='{b}'] .badge") for b in ("company", "reply-daily", "key-0f9e")] \
        == ["ok", "warning", "exceeded"]
    assert tab.page.locator(".meter-mark").count() == 9
    assert tab.page.locator(".alerts li").count() == 3
    tab.shot(shots / "mock-budgets.png")
    for name in ("mock-error", "mock-feature", "mock-budgets"):
        assert_real_png(shots / f"{name}.png", WIDTH)
