// The console's only script: while a batch runs, the part of the page that
// shows it is fetched again every 2 seconds and swapped in. Without script
// the pages work the same; reload to see progress.
"use strict";
(function () {
  const PERIOD_MS = 2000;
  const region = document.querySelector("[data-refresh]");
  if (!region) {
    return;
  }
  const running = () => region.dataset.running === "true";

  async function refresh() {
    let response;
    try {
      response = await fetch(region.dataset.refresh, {
        credentials: "same-origin",
        headers: { Accept: "text/html" },
        cache: "no-store",
      });
    } catch (error) {
      schedule(); // the network blinked: try again at the next tick
      return;
    }
    if (response.status === 401 || response.status === 404) {
      // Signed out meanwhile (the page goes to sign-in), or the batch is gone.
      window.location.reload();
      return;
    }
    if (response.ok) {
      const html = await response.text();
      const stillRunning = response.headers.get("X-Console-Running") === "true";
      if (!stillRunning && region.dataset.reload === "true") {
        // Finished: the whole page changes (its buttons, its failed lines).
        window.location.reload();
        return;
      }
      region.innerHTML = html;
      region.dataset.running = stillRunning ? "true" : "false";
    }
    schedule();
  }

  function schedule() {
    if (running()) {
      window.setTimeout(refresh, PERIOD_MS);
    }
  }

  schedule();
})();
