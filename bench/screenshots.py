"""Screenshots of the console's main pages, for the README.

Run with `python -m bench.screenshots` (writes docs/console-*.png). It starts
its own Valkey and MongoDB-compatible server in a temporary folder, serves the
edge in this process on loopback, makes a tenant's work to look at (batches,
one with failed lines and one still running, deliveries with attempts), and
photographs each page in headless Chromium (bin/chromium installs it).
"""

from __future__ import annotations

import argparse
import base64
import tempfile
from pathlib import Path

from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from cli.embedded import start_mongo, start_valkey
from tests.browser.console_site import (
    JSONL,
    MIXED,
    browser_sign_in,
    chromium,
    finished_batch,
    jsonl,
    served,
)
from tests.local import NO_BULK, LocalTenant, running_local
from tests.receiver import Receiver, Reply
from tests.stack import Servers

DOCS = Path(__file__).resolve().parent.parent / "docs"
WIDTH = 1280

TEAM = [
    {"custom_id": f"support-{i}", "body": {"model": "gpt-4o", "name": f"Support {i}"}}
    for i in range(1, 9)
]
MANIFEST = [
    {
        "custom_id": "support-1",
        "body": {"model": "gpt-4o", "name": "Support 1", "instructions": "Be brief and kind."},
    },
    *TEAM[1:6],
    {"custom_id": "triage-bot", "body": {"model": "gpt-4o-mini", "name": "Triage"}},
    {"custom_id": "broken-bot", "body": {"name": "No model", "metadata": {"team": 7}}},
]


def shoot(driver: WebDriver, path: Path) -> None:
    """The whole page (not only the window), at WIDTH pixels wide."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    height = min(int(metrics["cssContentSize"]["height"]), 3000)
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"wrote {path}")


def seed(tenant: LocalTenant) -> dict[str, str]:
    """A tenant's work: applied and created batches (one with failed lines), and
    deliveries to a receiver that fails and then answers."""
    applied = tenant.request("POST", "/v1/batches?mode=apply", data=jsonl(TEAM), headers=JSONL)
    assert applied.status_code == 202, applied.text
    finished_batch(tenant, [{"body": {"model": "gpt-4o", "name": f"Bot {i}"}} for i in range(40)])
    failed = finished_batch(tenant, [*MIXED, *[{"body": {"model": "gpt-4o"}}] * 9])
    return {"failed": failed["id"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        valkey, mongo = start_valkey(data / "valkey"), start_mongo(data / "mongo")
        try:
            servers = Servers(mongo=mongo, valkey=valkey)
            settings = servers.settings(EXPRESS_BATCH_LINES="0", CONSOLE_COOKIE_SECURE="false")
            with (
                running_local(settings, NO_BULK) as local,
                served(local.app) as base,
                Receiver() as hook,
                chromium(data / "profile", (WIDTH, 900)) as driver,
            ):
                tenant = local.new_tenant("acme")
                ids = seed(tenant)
                # One batch still running: no bulk worker takes it.
                running = [{"body": {"model": "gpt-4o", "name": f"Later {i}"}} for i in range(500)]
                tenant.request("POST", "/v1/batches", data=jsonl(running), headers=JSONL)
                hook.then(Reply(500, body=b'{"error": "database is read-only"}'))
                tenant.request("PUT", "/v1/webhook_endpoint", json={"url": hook.url()})
                test = "/v1/webhook_endpoint/test"
                sent = [tenant.request("POST", test).json() for _ in range(2)]
                for delivery in sent:
                    tenant.wait_delivery(delivery["id"], "delivered")
                browser_sign_in(driver, base, tenant.api_key)
                shoot(driver, args.out / "console-batches.png")
                driver.get(f"{base}/console/batches/{ids['failed']}")
                shoot(driver, args.out / "console-batch.png")
                driver.get(f"{base}/console/deliveries")
                shoot(driver, args.out / "console-deliveries.png")
                driver.get(f"{base}/console/deliveries/{sent[0]['id']}")
                shoot(driver, args.out / "console-delivery.png")
                manifest = data / "assistants.jsonl"
                manifest.write_bytes(jsonl(MANIFEST))
                driver.get(f"{base}/console/provisioning")
                driver.find_element(By.ID, "manifest").send_keys(str(manifest))
                driver.find_element(By.ID, "prune").click()
                driver.find_element(By.XPATH, "//button[text()='Show the plan']").click()
                WebDriverWait(driver, 30).until(
                    EC.presence_of_element_located((By.ID, "plan-summary"))
                )
                shoot(driver, args.out / "console-provisioning.png")
        finally:
            mongo.stop()
            valkey.stop()


if __name__ == "__main__":
    main()
