"""Screenshots of a real deployment run in the Prefect UI, for the README.

What it does: the same setup as `tests/e2e/test_deployment.py` (a real `prefect server start` on a free
port, the emulator, the `bedrock-batch-process` pool, `prefect deploy -n local`, a process worker), one
`prefect deployment run 'bedrock-batch-inference/local' ... --watch` of `samples/topics.csv` through
`joke_about_topic`, then headless Chromium opens the finished flow run in the UI and saves:

- `docs/prefect-ui-run.png`: the flow run page (state, task graph with its artifacts, logs);
- `docs/prefect-ui-artifacts.png`: the run's Artifacts tab (progress, jobs table, results link, summary,
  and the estimate from the `estimate` task);
- `docs/prefect-ui-progress.png`: the progress artifact (records processed / records in the run);
- `docs/prefect-ui-jobs.png`: the jobs table artifact (one row per shard: job, status, records, tokens);
- `docs/prefect-ui-estimate.png`: the estimate artifact (tokens, cost at batch price, makespan);
- `docs/prefect-ui-summary.png`: the run summary artifact (rows ok / with error, tokens, cost, output).

Reproduce (about two minutes; needs Chromium, which CI does not):

    apt-get update && apt-get install -y chromium      # Debian's package; root works
    .venv/bin/python docs/make_screenshot.py           # writes docs/prefect-ui-*.png

Against a server and a finished run you already have:

    .venv/bin/python docs/make_screenshot.py --api-url http://127.0.0.1:4200/api --flow-run-id <uuid>

The Prefect UI is a JavaScript app and the run page's tabs are switched in the page, so Chromium is driven
over the DevTools protocol (`--remote-debugging-port`, with the `websockets` package Prefect already
depends on): open the page, wait until the run's text has rendered, click the Artifacts tab, capture.
The server must be started with `PREFECT_UI_API_URL` (or `PREFECT_SERVER_API_PORT`) matching its port,
or the UI calls the default `http://127.0.0.1:4200/api` and shows "Can't connect to Server API".
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1600,1400",
]


class Browser:
    """Headless Chromium over the DevTools protocol: navigate, evaluate, wait, capture."""

    def __init__(self, chromium: str, width: int = 1600, height: int = 1400) -> None:
        import httpx
        from websockets.sync.client import connect

        self._profile = tempfile.mkdtemp(prefix="bbf-chromium-")
        self._proc = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-port=0",
             "--remote-debugging-address=127.0.0.1", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self._profile) / "DevToolsActivePort"
        _wait(lambda: port_file.exists() and port_file.read_text().strip(), "Chromium's DevTools port", 60)
        port = port_file.read_text().split()[0]
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        self._ws = connect(page["webSocketDebuggerUrl"], max_size=None)
        self._id = 0
        self.resize(width, height)

    def resize(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for_text(self, *texts: str, timeout: float = 60, settle_s: float = 2.0) -> None:
        """Until the page's text holds every one of `texts`; then let charts and the graph finish drawing."""
        probe = " && ".join(f"document.body.innerText.includes({json.dumps(t)})" for t in texts)
        _wait(lambda: self.js(f"!!document.body && {probe}"), f"page text {texts}", timeout)
        time.sleep(settle_s)  # a docs tool, not a test: the canvas graph has no text to wait for

    def click_text(self, text: str) -> None:
        found = self.js(
            "(() => { const el = [...document.querySelectorAll('button, [role=tab], a, li')]"
            f".find(e => e.textContent.trim() === {json.dumps(text)}); if (el) el.click(); return !!el; }})()")
        if not found:
            raise RuntimeError(f"nothing to click labelled {text!r}")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")

    def close(self) -> None:
        try:
            self._ws.close()
        finally:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            shutil.rmtree(self._profile, ignore_errors=True)


def _wait(check: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.25)
    return value


def take_screenshots(api_url: str, flow_run_id: str, out: Path, chromium: str) -> list[Path]:
    from tests.e2e.test_deployment import read_run

    run, artifacts, _ = read_run(api_url, flow_run_id)
    by_key = {a.key: a for a in artifacts if a.key}
    prefix = next(k.removesuffix("-progress") for k in by_key if k.endswith("-progress"))
    ui = api_url.removesuffix("/").removesuffix("/api")
    run_url = f"{ui}/runs/flow-run/{flow_run_id}"
    written = []
    browser = Browser(chromium)
    try:
        browser.open(run_url)
        browser.wait_for_text(run.name, "Completed", "Beginning flow run")
        written.append(out / "prefect-ui-run.png")
        browser.screenshot(written[-1])

        browser.click_text("Artifacts")
        browser.wait_for_text(*sorted(by_key))
        written.append(out / "prefect-ui-artifacts.png")
        browser.screenshot(written[-1])

        # The jobs table is wide (13 columns, a long job ARN): a wider window shows all of it.
        pages = [("progress", "prefect-ui-progress.png", "100", (1600, 500)),
                 ("jobs", "prefect-ui-jobs.png", "shard-0001", (2600, 700)),
                 ("estimate", "prefect-ui-estimate.png", "cost, expected (batch)", (1600, 1100)),
                 ("results-summary", "prefect-ui-summary.png", "with error", (1600, 800))]
        for suffix, name, text, size in pages:
            artifact = by_key.get(f"{prefix}-{suffix}")
            if artifact is None:
                print(f"no {prefix}-{suffix} artifact: {name} skipped")
                continue
            browser.resize(*size)
            browser.open(f"{ui}/artifacts/artifact/{artifact.id}")
            browser.wait_for_text(f"{prefix}-{suffix}", text)
            written.append(out / name)
            browser.screenshot(written[-1])
    finally:
        browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-url", help="an existing server's API (with --flow-run-id); default: start one")
    parser.add_argument("--flow-run-id", help="a finished run on --api-url")
    parser.add_argument("--out", type=Path, default=DOCS, help="where the PNGs go (default: docs/)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args(argv)
    if not args.chromium:
        parser.error("no chromium on PATH: apt-get install -y chromium (or give --chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.api_url or args.flow_run_id:
        if not (args.api_url and args.flow_run_id):
            parser.error("--api-url and --flow-run-id go together")
        take_screenshots(args.api_url, args.flow_run_id, args.out, args.chromium)
        return 0

    from tests.e2e.test_deployment import deployed_stack, run_sample

    with deployed_stack() as stack:
        flow_run_id, _ = run_sample(stack)
        print(f"flow run {flow_run_id} finished; UI at {stack.url}")
        take_screenshots(stack.api_url, flow_run_id, args.out, args.chromium)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
