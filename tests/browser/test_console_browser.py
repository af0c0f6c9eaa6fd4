"""The console in a real browser: headless Chromium (Debian's) driven by
Selenium, against the app served by a real WSGI server on loopback. It signs
in, follows a batch's progress as the page refreshes itself, reads its failed
lines, retries them and lands on the child batch, reads a delivery's attempts,
and signs out. No skip: without the browser it fails (bin/chromium installs it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.console_site import (
    JSONL,
    MIXED,
    browser_sign_in,
    chromium,
    jsonl,
    run_bulk,
    served,
)
from tests.local import NO_BULK, Local, running_local
from tests.receiver import Receiver, Reply
from tests.stack import Servers, wait_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def site(servers: Servers) -> Iterator[tuple[Local, str]]:
    """A deployment without a bulk worker (its batches stay in progress until the
    test runs them), its cookie not Secure-only as it is served over plain
    HTTP, served on loopback."""
    settings = servers.settings(EXPRESS_BATCH_LINES="0", CONSOLE_COOKIE_SECURE="false")
    with running_local(settings, NO_BULK) as deployment, served(deployment.app) as base:
        yield deployment, base


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


def wait(driver: WebDriver, seconds: float = 20) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, seconds)


def browser_errors(driver: WebDriver) -> list[str]:
    """What the browser's console logged as errors: a script or style the CSP
    refused, a resource that failed to load, a script that threw."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_sign_in_follow_a_batch_retry_it_read_a_delivery_and_sign_out(
    site: tuple[Local, str], browser: WebDriver
) -> None:
    local, base = site
    tenant = local.new_tenant()
    made = tenant.request("POST", "/v1/batches", data=jsonl(MIXED), headers=JSONL)
    assert made.status_code == 202
    batch_id = made.json()["id"]

    browser_sign_in(browser, base, tenant.api_key)
    # The key went into the form once; the browser keeps only an HttpOnly cookie.
    cookies = browser.get_cookies()
    assert [c["name"] for c in cookies] == ["console_session"]
    assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
    assert tenant.api_key not in cookies[0]["value"]
    assert browser.execute_script("return document.cookie") == ""
    assert browser.execute_script("return window.localStorage.length") == 0

    # The batch is in progress: listed with its progress bar, refreshed live.
    row = wait(browser).until(
        EC.presence_of_element_located((By.XPATH, f"//tr[.//code[text()='{batch_id}']]"))
    )
    assert "in progress" in row.text
    assert row.find_element(By.TAG_NAME, "progress").get_attribute("value") == "0"
    browser.find_element(By.LINK_TEXT, batch_id).click()
    wait(browser).until(EC.url_contains(f"/console/batches/{batch_id}"))
    assert "in progress" in browser.find_element(By.ID, "batch-status").text

    # A bulk worker runs it: the page sees it finish by itself (no reload here).
    run_bulk(local)
    wait(browser, 30).until(EC.text_to_be_present_in_element((By.ID, "batch-status"), "completed"))
    progress = browser.find_element(By.CSS_SELECTOR, "#batch-summary progress")
    assert progress.get_attribute("value") == progress.get_attribute("max") == "3"
    # Its failed lines, by field.
    failed = browser.find_element(By.CSS_SELECTOR, "table.failed").text
    assert "no-model" in failed and "model: Field required" in failed
    assert "metadata.team: Input should be a valid string" in failed
    assert "support-bot" not in failed

    # Retry: the child batch of the two failed lines.
    browser.find_element(By.ID, "retry").click()
    wait(browser).until(EC.text_to_be_present_in_element((By.TAG_NAME, "main"), "Retry started"))
    child_id = browser.current_url.split("/console/batches/")[1].split("?")[0]
    assert child_id != batch_id
    assert browser.find_element(By.LINK_TEXT, batch_id)  # "Retry of" its parent
    child = tenant.request("GET", f"/v1/batches/{child_id}").json()
    assert child["retry_of"] == batch_id and child["request_counts"]["total"] == 2

    # A delivery's attempts, with what the receiver answered.
    with Receiver() as hook:
        hook.then(Reply(503, body=b"try again later"))
        put = tenant.request("PUT", "/v1/webhook_endpoint", json={"url": hook.url()})
        assert put.status_code == 200
        browser.find_element(By.LINK_TEXT, "Deliveries").click()
        wait(browser).until(EC.url_contains("/console/deliveries"))
        browser.find_element(By.XPATH, "//button[text()='Send a test event']").click()
        wait(browser).until(EC.url_contains("notice=test"))
        delivery_id = browser.current_url.split("/console/deliveries/")[1].split("?")[0]
        wait_until(lambda: len(tenant.delivery(delivery_id)["attempts"]) >= 2)
    browser.refresh()
    attempts = browser.find_elements(By.CSS_SELECTOR, "ol.attempts > li")
    assert len(attempts) >= 2
    assert "503" in attempts[0].text and "try again later" in attempts[0].text
    assert "200" in attempts[1].text

    assert browser_errors(browser) == []

    # Sign out: the session is over, and the pages send back to sign-in.
    browser.find_element(By.XPATH, "//button[text()='Sign out']").click()
    wait(browser).until(EC.url_contains("/console/sign-in"))
    assert "You are signed out" in browser.find_element(By.TAG_NAME, "main").text
    browser.get(base + f"/console/batches/{batch_id}")
    wait(browser).until(EC.url_contains("/console/sign-in"))


def test_the_keyboard_reaches_every_control_of_the_sign_in_page(
    site: tuple[Local, str], browser: WebDriver
) -> None:
    _, base = site
    browser.delete_all_cookies()
    browser.get(base + "/console/sign-in")
    # The skip link first, then the field (labelled), then its button.
    body = browser.find_element(By.TAG_NAME, "body")
    body.click()
    focused = []
    for _ in range(4):
        browser.switch_to.active_element.send_keys("\ue004")  # Tab
        active = browser.switch_to.active_element
        focused.append(active.get_attribute("id") or active.text or active.tag_name)
    assert "api_key" in focused and "Sign in" in focused
    label = browser.find_element(By.CSS_SELECTOR, "label[for='api_key']")
    assert label.text == "API key"
