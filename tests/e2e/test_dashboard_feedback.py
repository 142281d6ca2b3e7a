"""The feature page's "Feedback and outcomes" panel in real headless Chromium, against a
real ``keel serve`` whose feedback came through ``keel.Client``: it shows what
``GET /api/feedback/stats`` answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import keel
from keel.testing import FakeUpstream
from tests.e2e.browser import headless_chromium
from tests.e2e.server import KeelProcess
from tests.e2e.test_dashboard import Tab
from tests.e2e.test_review_page import assert_real_png

CONFIG = """
providers:
  up: {{type: openai, base_url: "{url}", timeout_s: 5}}
features:
  triage:
    output: {{kind: label, labels: [billing, shipping, other]}}
    versions: {{gpt: {{provider: up, model: fake-model}}}}
    aliases: {{champion: gpt}}
  quiet:
    output: {{kind: label, labels: [billing, shipping, other]}}
    versions: {{gpt: {{provider: up, model: fake-model}}}}
    aliases: {{champion: gpt}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeelProcess]:
    tmp = tmp_path_factory.mktemp("feedback-page")
    with FakeUpstream(reply="billing") as up:
        config = tmp / "keel.yaml"
        config.write_text(CONFIG.format(url=up.base_url))
        with KeelProcess(config, tmp / "keel.db") as proc:
            with keel.Client(proc.base_url) as k:
                traces = [k.call("triage", {"text": f"charged twice {i}"}).trace_id
                          for i in range(6)]
                for trace in traces[:3]:
                    k.thumbs_up(trace)
                k.thumbs_down(traces[3], comment="it was about shipping")
                k.correct(traces[3], "shipping")
                k.rate(traces[0], 5)
                k.rate(traces[1], 4)
                for trace in traces[:2]:
                    k.outcome(trace, "ticket_resolved", source="crm")
                k.call("quiet", {"text": "hello"})
            yield proc


def test_the_feature_page_shows_feedback_and_outcomes(server: KeelProcess,
                                                      tmp_path: Path) -> None:
    with headless_chromium(tmp_path / "profile") as browser:
        tab = Tab(browser.new_page()).open(f"{server.base_url}/#/features/triage")
        stats = httpx.get(f"{server.base_url}{tab.request('/api/feedback/stats')}").json()
        (gpt,) = stats["versions"]
        assert gpt["calls"] == 6 and gpt["thumbs"]["up_rate"] == 0.75
        assert tab.text("[data-feedback=with_feedback]") == "4"
        assert tab.text("[data-feedback=up_rate]") == "75%"
        assert tab.text("[data-feedback=rating]") == "4.50"
        assert tab.text("[data-feedback=corrections]") == "1"
        row = tab.text(".table-feedback tr[data-version='gpt']")
        assert "33.3%" in row and "16.7%" in row  # resolved 2 of 6, corrected 1 of 6
        assert "ticket_resolved" in tab.text(".table-feedback thead")
        assert tab.page.locator("[data-chart=bars] rect.bar").count() == 1
        assert_real_png(tab.shot(tmp_path / "feature-feedback.png"), 1280)

        quiet = Tab(browser.new_page()).open(f"{server.base_url}/#/features/quiet")
        panel = quiet.text("section:has(h2:text('Feedback and outcomes')) .panel-body")
        assert "No feedback yet" in panel
        assert not quiet.crashes
