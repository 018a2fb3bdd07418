"""The browser chat page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``):
a question typed in, the answer arriving in pieces, sources with headings, the usage line, and a
wrong token shown as a readable error. Skipped without Chromium, except under CI, where it fails."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.local_stack.conftest import Served

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1100,900",
)
# Records the answer's length at each DOM change: more than one value means it arrived in pieces.
OBSERVE = """
window.__lengths = [];
new MutationObserver(() => {
  const a = document.querySelector('.turn:last-child .answer');
  if (a) window.__lengths.push(a.textContent.length);
}).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        message = f"{CHROMIUM} and {CHROMEDRIVER} are needed: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _wait(driver: Any, script: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def _ask(driver: Any, question: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "question")
    box.send_keys(question)
    box.send_keys(Keys.ENTER)
    _wait(driver, "return document.body.dataset.busy === 'true' || document.querySelectorAll('.turn').length > 0")
    _wait(driver, "return document.body.dataset.busy === 'false'")


def test_page_streams_an_answer_with_sources_and_usage(served: Served, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    stack = served.stack
    browser.get(f"{stack.chat_url}/#token={stack.token}")
    assert browser.execute_script("return location.hash") == ""  # the token leaves the address bar
    browser.execute_script(OBSERVE)
    _ask(browser, "How much are meals reimbursed per day when travelling?")

    answer = browser.find_element(By.CSS_SELECTOR, ".turn:last-child .answer").text
    assert "Meals are reimbursed up to 60 USD per day" in answer
    lengths = browser.execute_script("return window.__lengths")
    growing = sorted({n for n in lengths if 0 < n < len(answer)})
    assert len(growing) >= 3, f"the answer did not arrive in pieces: {lengths}"
    sources = [li.text for li in browser.find_elements(By.CSS_SELECTOR, ".turn:last-child .sources li")]
    assert any("samples/handbook.md#0" in s and "Acme Cloud Handbook" in s for s in sources), sources
    assert any("— Acme Cloud Handbook > On-call rotation" in s for s in sources), sources
    usage = browser.find_element(By.CSS_SELECTOR, ".turn:last-child .usage").text
    assert "prompt" in usage and "est. $0.000" in usage and "first token" in usage, usage
    # the answer cites [1]: the citations event tags that source, and only sources the answer cites
    cited = [li.text for li in browser.find_elements(By.CSS_SELECTOR, ".turn:last-child .sources li.cited")]
    assert cited and all(s.endswith("cited") for s in cited), cited
    assert any("samples/handbook.md#0" in s for s in cited) and "[1]" in answer, (cited, answer)
    assert len(cited) < len(sources)
    summary = browser.find_element(By.CSS_SELECTOR, ".turn:last-child .sources summary").text
    assert summary == f"Sources ({len(sources)}), {len(cited)} cited", summary
    assert not browser.find_elements(By.CSS_SELECTOR, ".turn:last-child .query")  # a first question as asked
    # a follow-up is searched as a standalone question (QUERY_REWRITE=history), and the page says so
    _ask(browser, "And what about the on-call rotation?")
    searched = browser.find_element(By.CSS_SELECTOR, ".turn:last-child .notice.query").text
    assert searched.startswith("Searched for: ") and searched != "Searched for: And what about the on-call rotation?"
    assert not browser.find_elements(By.CSS_SELECTOR, ".error")
    browser.save_screenshot(str(tmp_path / "chat-page.png"))
    if os.environ.get("CHAT_PAGE_SCREENSHOT"):
        shutil.copy(tmp_path / "chat-page.png", os.environ["CHAT_PAGE_SCREENSHOT"])


def test_page_shows_a_wrong_token_as_a_readable_error(served: Served, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{served.stack.chat_url}/")
    token = browser.find_element(By.ID, "token")
    token.clear()
    token.send_keys("not-the-token")
    _ask(browser, "What is the on-call rotation?")
    error = browser.find_element(By.CSS_SELECTOR, ".turn:last-child .error").text
    assert "Error 401: missing or invalid bearer token" in error
    assert "make serve prints it" in error
    assert not browser.find_elements(By.CSS_SELECTOR, ".turn:last-child .answer")


def test_page_is_served_without_the_token_and_only_when_enabled(served: Served) -> None:
    r = httpx.get(served.stack.chat_url + "/")
    assert r.status_code == 200 and "<title>Qwen RAG chat</title>" in r.text
    assert "script-src 'sha256-" in r.headers["content-security-policy"]
    assert served.stack.token not in r.text
    # the API behind it still wants the token
    assert httpx.post(served.stack.chat_url + "/chat/completions/stream", json={}).status_code == 401


def test_the_page_is_off_unless_chat_page_is_true(monkeypatch: pytest.MonkeyPatch) -> None:
    from chat import page
    from fastapi import FastAPI

    from local.stack import ROOT

    monkeypatch.delenv("CHAT_PAGE", raising=False)
    assert page.PageSettings().chat_page is False
    assert "CHAT_PAGE" not in (ROOT / "template.yaml").read_text()  # a deployed function has no page
    off, on = FastAPI(), FastAPI()
    page.mount(off)
    monkeypatch.setenv("CHAT_PAGE", "true")
    page.mount(on)
    assert [m.cls for m in off.user_middleware] == []
    assert [m.cls for m in on.user_middleware] == [page.PageMiddleware]  # type: ignore[comparison-overlap]
