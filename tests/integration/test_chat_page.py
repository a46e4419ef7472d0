"""The chat page of ``edgespec serve`` in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by selenium): type, press Enter, watch it stream, start over."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

pytestmark = pytest.mark.slow
FIRST = "What is the capital of France?"
SECOND = "What is 2 + 2?"


@pytest.fixture
def browser(tmp_path) -> Any:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("needs Debian's chromium and chromium-driver (tools/_system_deps.sh "
                    "installs them when apt-get can run as root)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1000,760", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))
    yield session
    session.quit()


def ask(browser: Any, question: str) -> str:
    """Type ``question``, press Enter, wait for the streamed answer to end; its text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    box = browser.find_element(By.ID, "input")
    box.send_keys(question)
    box.send_keys(Keys.ENTER)
    WebDriverWait(browser, 180).until(lambda b: b.execute_script(
        "const a = document.querySelector('.assistant:last-child');"
        "return a !== null && a.dataset.state !== 'streaming';"))
    state, text = browser.execute_script(
        "const a = document.querySelector('.assistant:last-child');"
        "return [a.dataset.state, a.textContent];")
    assert state == "done", text
    return str(text)


def test_chat_page_streams_the_targets_answer_and_starts_over(browser, served, generated,
                                                              tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(served.url)
    WebDriverWait(browser, 30).until(
        lambda b: b.find_element(By.ID, "model").text.startswith("target "))
    assert ask(browser, FIRST) == generated(FIRST, 512)["text"]
    status = browser.find_element(By.ID, "status").text
    assert "acceptance" in status and "tok/s" in status and "RTT" in status, status
    browser.save_screenshot(str(tmp_path / "chat.png"))
    browser.find_element(By.ID, "new-chat").click()
    assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
    # a new chat sends only the new question: the answer is the one-turn answer
    assert ask(browser, SECOND) == generated(SECOND, 512)["text"]
    assert len(browser.find_elements(By.CSS_SELECTOR, ".msg")) == 2
    assert (tmp_path / "chat.png").stat().st_size > 0
