"""The review queue's web page (/review), driven in real headless Chromium against a
real ``keel serve`` process; plus how the page and its assets are served.

The browser test fails (never skips) when Chromium or Playwright is missing: see
``tests/e2e/browser.py`` for the install command.
"""

from __future__ import annotations

import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from keel.server import errors, pages
from keel.testing import FakeUpstream
from tests.e2e.browser import BrowserMissing, headless_chromium
from tests.e2e.server import KeelProcess

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

# --- how the page is served (in process) ------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = FastAPI()
    errors.install(app)
    app.include_router(pages.router)
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize(("path", "content_type"), [
    ("/review", "text/html; charset=utf-8"),
    ("/static/review.html", "text/html; charset=utf-8"),
    ("/static/review.js", "text/javascript; charset=utf-8"),
    ("/static/review.css", "text/css; charset=utf-8"),
])
def test_page_and_assets_are_served_with_their_content_types(client: TestClient, path: str,
                                                             content_type: str) -> None:
    r = client.get(path)
    assert r.status_code == 200 and r.content
    assert r.headers["content-type"] == content_type
    assert r.headers["x-content-type-options"] == "nosniff"


def test_the_page_loads_only_its_own_files(client: TestClient) -> None:
    r = client.get("/review")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "no CDN, no remote assets"
    assets = re.findall(r"""(?:src|href)="(/static/[^"]+)\"""", html)
    assert sorted(assets) == ["/static/review.css", "/static/review.js"]
    for asset in assets:
        assert client.get(asset).status_code == 200


@pytest.mark.parametrize("name", [  # ("/static/.." is "/" once resolved: the dashboard)
    "nope.js", "...", ".hidden.css", "review", "pages.py", "__init__.py",
    "review.js.map", "review.html~", "review%00.js", "%2e%2e", "..%2fpages.py",
    "..%2F..%2Fpyproject.toml", "..%5Cpages.py", "REVIEW.JS", "review.JS",
])
def test_unknown_or_unsafe_names_are_404_in_keels_error_shape(client: TestClient,
                                                              name: str) -> None:
    r = client.get(f"/static/{name}")
    assert r.status_code == 404, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == "not_found" and error["type"] == "not_found_error"
    assert set(error) == {"code", "message", "type", "param"}
    assert "Traceback" not in r.text and "keel/server" not in r.text  # no paths leak


def test_traversal_by_path_segments_never_reaches_the_package(client: TestClient) -> None:
    for path in ("/static/../pages.py", "/static/%2e%2e/pages.py", "/static/static/review.js",
                 "/static/", "/static"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found"
        assert "import" not in r.text


# --- the page in a browser, against a real server -------------------------------------

LABELS = ["card_arrival", "card_not_working", "lost_or_stolen_card", "transaction_charged_twice",
          "exchange_rate", "pin_blocked", "refund_not_showing_up", "top_up_failed", "other"]

# what the fake model answers for each message (by a phrase in it)
ANSWERS = {
    "has not arrived": "card_arrival",
    "charged twice": "exchange_rate",  # wrong, for the reviewer to correct
    "what exchange rate": "exchange_rate",
    "raise my limit": "credit_limit",  # not an allowed label: a failed validator
}
TICKET = {"priority": "high", "team": "cards", "summary": "Card not delivered"}

CONFIG = """
providers:
  fake: {{type: openai, base_url: "{url}", timeout_s: 5}}
features:
  triage:
    description: Route a banking customer's message to an intent.
    output: {{kind: label, labels: {labels}}}
    versions:
      mini-2: {{provider: fake, model: fake-model, params: {{logprobs: true}}}}
    aliases: {{champion: mini-2}}
    validators:
      - {{type: allowed_labels, on_fail: review}}
    policy: {{accept_at: 0.99}}        # every answer goes to review
    safe_default: {{label: other}}
  ticket:
    output: {{kind: json}}
    versions:
      v1: {{provider: fake, model: fake-model}}
    aliases: {{champion: v1}}
    policy: {{unknown_confidence: review}}
    review: {{mode: held, hold_timeout_s: 90}}
    safe_default: {{priority: low}}
"""


def _reply(body: dict[str, Any]) -> str:
    text = str(body["messages"][-1]["content"])
    if "TICKET:" in text:
        return '{"priority": "low", "team": "cards", "summary": "Card not delivered"}'
    return next((label for phrase, label in ANSWERS.items() if phrase in text), "other")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeelProcess]:
    tmp = tmp_path_factory.mktemp("review-page")
    with FakeUpstream(reply=_reply) as upstream:
        config = tmp / "keel.yaml"
        config.write_text(CONFIG.format(url=upstream.base_url, labels=LABELS))
        with KeelProcess(config, tmp / "keel.db") as proc:
            page = httpx.get(f"{proc.base_url}/review")
            if page.status_code == 404:
                pytest.fail("GET /review is 404: keel.server.pages.router is not registered "
                            "in keel.server.create_app")
            yield proc


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    try:
        with headless_chromium(tmp_path / "chromium-profile") as context:
            yield context
    except BrowserMissing as exc:
        pytest.fail(f"the review page test needs a browser: {exc}", pytrace=False)


def call(server: KeelProcess, feature: str, text: str, timeout: float = 30) -> dict[str, Any]:
    r = httpx.post(f"{server.base_url}/v1/features/{feature}", json={"input": {"text": text}},
                   timeout=timeout)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def review(server: KeelProcess, trace_id: str) -> dict[str, Any]:
    r = httpx.get(f"{server.base_url}/api/reviews/{trace_id}")
    assert r.status_code == 200, r.text
    item: dict[str, Any] = r.json()
    return item


def wait_queued(server: KeelProcess, feature: str, count: int, timeout_s: float = 10) -> None:
    """Review items are written off the hot path: wait until ``count`` are pending."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = httpx.get(f"{server.base_url}/api/reviews", params={"feature": feature})
        if r.status_code == 200 and len(r.json()["items"]) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{count} {feature} item(s) never reached the review queue")


def assert_real_png(path: Path, width: int, min_colours: int = 12) -> None:
    """A screenshot with content: a PNG of the page's width whose pixels are not one flat
    colour (counted over the decoded scanlines, without an image library)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    png_width, png_height = struct.unpack(">II", data[16:24])
    assert png_width == width and png_height >= 300, (path.name, png_width, png_height)
    idat, pos = b"", 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        if data[pos + 4:pos + 8] == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    pixels = zlib.decompress(idat)
    assert len(set(pixels)) >= min_colours, f"{path.name} looks blank"
    assert len(data) > 8_000, f"{path.name} is suspiciously small ({len(data)} bytes)"


def shown_trace(page: Page) -> str:
    page.wait_for_selector("#item:not([hidden])")
    return page.inner_text("#item-trace").strip()


def wait_next(page: Page, previous: str) -> str:
    """Wait until the page shows an item other than ``previous``, or the empty queue."""
    page.wait_for_function(
        """prev => !document.getElementById('empty').hidden
                   || (!document.getElementById('item').hidden
                       && document.getElementById('item-trace').textContent !== prev)""",
        arg=previous)
    return "" if page.is_visible("#empty") else page.inner_text("#item-trace").strip()


def test_a_reviewer_works_through_the_queue_with_the_keyboard(
        server: KeelProcess, browser: BrowserContext, tmp_path: Path) -> None:
    # KEEL_SCREENSHOTS keeps them (e.g. as CI artifacts); by default they go to tmp_path
    shots = Path(os.environ.get("KEEL_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    width = 1280
    texts = {"my card still has not arrived": None, "I was charged twice for one coffee": None,
             "what exchange rate do you use for euros": None, "can you raise my limit please": None}
    for text in texts:
        body = call(server, "triage", text)
        assert body["decision"] == "review", body
        texts[text] = body["trace_id"]
    by_trace = {trace: text for text, trace in texts.items()}
    wait_queued(server, "triage", len(texts))

    page = browser.new_page()
    crashes: list[str] = []
    page.on("pageerror", lambda exc: crashes.append(str(exc)))
    page.goto(f"{server.base_url}/review")

    # asked once for a name; the feature filter lists the features
    page.wait_for_selector("#setup[open]")
    assert page.evaluate("document.activeElement.id") == "setup-name"
    assert page.locator("#setup-feature option").all_inner_texts() == [
        "All features", "ticket", "triage"]
    page.keyboard.type("ana")
    page.select_option("#setup-feature", "triage")
    page.focus("#setup-name")
    page.keyboard.press("Enter")

    # 1. the item as a reviewer sees it
    first = shown_trace(page)
    assert first in by_trace
    assert page.inner_text("#item-input") == by_trace[first]
    assert page.inner_text("#item-feature") == "triage"
    assert page.inner_text("#item-version") == "mini-2"
    assert "Deferred" in page.inner_text("#item-mode")
    assert page.inner_text("#confidence-value") == "0.95"
    assert page.get_attribute("#confidence-meter", "aria-valuenow") is not None
    assert "accept_at 0.99" in page.inner_text("#item-reason")
    assert "allowed_labels" in page.inner_text("#validators")
    assert "triage" in page.inner_text("#counts")
    assert page.evaluate("localStorage.getItem('keel.review.reviewer')") == "ana"
    page.screenshot(path=shots / "item.png", full_page=True)

    # the help overlay: ? opens it, Esc closes it
    page.keyboard.press("?")
    page.wait_for_selector("#help[open]")
    page.keyboard.press("Escape")
    page.wait_for_selector("#help", state="hidden")

    # 2. an API error is shown, not swallowed: someone else closed this item meanwhile
    r = httpx.post(f"{server.base_url}/api/reviews/{first}/verdict",
                   json={"reviewer": "bob", "verdict": "approve"})
    assert r.status_code == 200, r.text
    page.keyboard.press("a")
    page.wait_for_selector("#alert:not([hidden])")
    assert "review_closed" in page.inner_text("#alert-code")
    assert first in page.inner_text("#alert-message")
    assert shown_trace(page) == first  # the item stays until the reviewer moves on
    page.screenshot(path=shots / "error.png", full_page=True)
    assert review(server, first)["votes"][0]["reviewer"] == "bob"

    # 3. `s` moves on; `a` approves
    page.keyboard.press("s")
    second = wait_next(page, first)
    assert second in by_trace and second != first
    page.keyboard.press("a")
    third = wait_next(page, second)
    approved = review(server, second)
    assert approved["status"] == "done" and approved["final"]["verdict"] == "approve"
    assert [(v["reviewer"], v["verdict"]) for v in approved["votes"]] == [("ana", "approve")]

    # 4. `e` on a label feature: type to filter the labels, Enter sends the picked one
    current = page.inner_text("#output-label")
    target, query = (("card_not_working", "not work") if current != "card_not_working"
                     else ("pin_blocked", "pin"))
    page.keyboard.press("e")
    page.wait_for_selector("#label-editor:not([hidden])")
    assert page.evaluate("document.activeElement.id") == "label-search"
    page.keyboard.type(query)
    options = page.locator("#label-list [role=option]")
    assert options.first.get_attribute("data-label") == target
    assert options.first.get_attribute("aria-selected") == "true"
    page.screenshot(path=shots / "label-editor.png", full_page=True)
    # Esc cancels without a verdict; arrows move; Enter sends
    page.keyboard.press("Escape")
    page.wait_for_selector("#editor", state="hidden")
    assert review(server, third)["status"] == "pending"
    page.keyboard.press("e")
    page.keyboard.type(query)
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowUp")
    page.keyboard.press("Enter")
    fourth = wait_next(page, third)
    edited = review(server, third)
    assert edited["final"]["verdict"] == "edit"
    assert edited["final"]["output"] == {"label": target}

    # 5. `r` rejects: a reason is required, Enter sends it
    page.keyboard.press("r")
    page.wait_for_selector("#rejecter:not([hidden])")
    page.keyboard.press("Enter")
    assert "required" in page.inner_text("#reject-error")
    page.keyboard.type("not a banking intent at all")
    page.screenshot(path=shots / "reject.png", full_page=True)
    page.keyboard.press("Enter")
    assert wait_next(page, fourth) == ""
    rejected = review(server, fourth)
    assert rejected["final"]["verdict"] == "reject"
    assert rejected["votes"][0]["reason"] == "not a banking intent at all"

    # 6. the queue is empty: a friendly state with a refresh button
    assert "The queue is empty" in page.inner_text("#empty")
    assert page.evaluate("document.activeElement.id") == "refresh-btn"
    assert page.locator("#refresh-btn").get_attribute("aria-keyshortcuts") == "s"
    page.screenshot(path=shots / "empty.png", full_page=True)

    # 7. a held item: the caller waits for this reviewer; a JSON correction reaches it
    held: dict[str, Any] = {}
    caller = threading.Thread(
        target=lambda: held.update(call(server, "ticket", "TICKET: card never came", 120)))
    caller.start()
    try:
        wait_queued(server, "ticket", 1)
        page.click("#settings-btn")
        page.wait_for_selector("#setup[open]")
        page.select_option("#setup-feature", "ticket")
        page.click("#setup-submit")
        shown_trace(page)
        assert "a caller is waiting" in page.inner_text("#item-mode")
        page.screenshot(path=shots / "held.png", full_page=True)
        page.keyboard.press("e")
        page.wait_for_selector("#json-editor:not([hidden])")
        page.fill("#json-text", '{"priority": "high",')  # not JSON: caught before sending
        page.keyboard.press("Control+Enter")
        assert "Not valid JSON" in page.inner_text("#json-error")
        assert page.get_attribute("#json-text", "aria-invalid") == "true"
        page.fill("#json-text", '{"priority": "high", "team": "cards", '
                                '"summary": "Card not delivered"}')
        page.keyboard.press("Control+Enter")
        page.wait_for_selector("#empty:not([hidden])")
    finally:
        caller.join(timeout=120)
    assert held["output"] == TICKET and held["reviewed"] is True and held["review"] == "edited"

    assert not crashes, crashes
    for name in ("item", "error", "label-editor", "reject", "empty", "held"):
        assert_real_png(shots / f"{name}.png", width)


def test_the_page_asks_for_the_api_key_when_the_server_wants_one(
        server: KeelProcess, browser: BrowserContext, tmp_path: Path) -> None:
    config = server.config
    with KeelProcess(config, tmp_path / "keys.db", env={"KEEL_API_KEYS": "sk-review"}) as keyed:
        traces = []
        for text in ("my card still has not arrived", "what exchange rate do you use"):
            r = httpx.post(f"{keyed.base_url}/v1/features/triage", json={"input": {"text": text}},
                           headers={"authorization": "Bearer sk-review"})
            assert r.status_code == 200 and r.json()["decision"] == "review"
            traces.append(r.json()["trace_id"])
        page = browser.new_page()
        page.goto(f"{keyed.base_url}/review")  # the page itself is public; its API calls are not
        page.wait_for_selector("#setup[open]")
        page.wait_for_function("document.activeElement.id === 'setup-key'")
        assert "API key" in page.inner_text("#setup-error")
        assert "invalid_api_key" in page.inner_text("#alert-code")
        page.fill("#setup-name", "ana")
        page.fill("#setup-key", "sk-review")
        page.click("#setup-submit")
        first = shown_trace(page)
        assert first in traces
        assert page.is_hidden("#alert")
        # the key stays in this tab only, never in localStorage
        assert page.evaluate("sessionStorage.getItem('keel.review.apiKey')") == "sk-review"
        assert "sk-review" not in str(page.evaluate("JSON.stringify(localStorage)"))

        # `s` on a pending item: the next one, or (on a server whose review API takes no
        # "skip" list) a visible error; never the same item in silence
        page.keyboard.press("s")
        page.wait_for_function(
            """first => !document.getElementById('alert').hidden
                        || document.getElementById('item-trace').textContent !== first""",
            arg=first)
        if page.is_visible("#alert"):
            assert "skip_unsupported" in page.inner_text("#alert-code")
        else:
            assert shown_trace(page) == next(t for t in traces if t != first)
