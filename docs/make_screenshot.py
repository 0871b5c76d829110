"""Screenshots of a real deployment run in the Prefect UI, for the README: the run form, the run while its
jobs are going, and the finished run.

What it does: the same setup as `tests/e2e/test_deployment.py` (a real `prefect server start` on a free
port, the emulator, the `bedrock-batch-process` pool, `prefect deploy -n local`, a process worker), then
one `prefect deployment run 'bedrock-batch-inference/local' ...` of 600 generated topics through
`joke_about_topic` in six 100-record jobs, at most two in flight (`max_concurrent_jobs=2`). The emulator
runs a slow profile (`LIVE_PROFILE`: about a minute per job) until the mid-run screenshots are taken, then
its default one. Headless Chromium saves:

- `docs/prefect-ui-form.png`: the deployment's run form (Run > Custom run,
  `/deployments/deployment/<id>/run`): each parameter with its description, which starts with its group
  (Source, Prompt and model, Inference settings, Limits, Output and AWS, Behaviour);

mid-run, once the jobs table (read through the API) has a Completed job, an InProgress job part-way
through and a shard still waiting for a slot:

- `docs/prefect-ui-jobs-live.png`: the jobs table artifact (`<prefix>-jobs`, republished at every poll):
  each shard's status (Completed, InProgress, `waiting for a slot`), records processed / ok, tokens;
- `docs/prefect-ui-progress-live.png`: the progress artifact: records done / total, jobs by status, ETA,
  cost so far;
- `docs/prefect-ui-run-live.png`: the flow run page while Running;

and once the run has finished:

- `docs/prefect-ui-run.png`: the flow run page (state, task graph with its artifacts, logs);
- `docs/prefect-ui-artifacts.png`: the run's Artifacts tab (progress, jobs table, results link, summary,
  and the estimate from the `estimate` task);
- `docs/prefect-ui-progress.png`: the progress artifact at the end (all records processed);
- `docs/prefect-ui-jobs.png`: the final jobs table (one row per shard: job, status, records, tokens, times);
- `docs/prefect-ui-estimate.png`: the estimate artifact (tokens, cost at batch price, makespan);
- `docs/prefect-ui-summary.png`: the run summary artifact (rows ok / with error, tokens, cost, output).

Reproduce (about five minutes; needs Chromium, which CI does not):

    apt-get update && apt-get install -y chromium      # Debian's package; root works
    .venv/bin/python docs/make_screenshot.py           # writes docs/prefect-ui-*.png

Against a server and a finished run you already have (the end-of-run screenshots and the form only):

    .venv/bin/python docs/make_screenshot.py --api-url http://127.0.0.1:4200/api --flow-run-id <uuid>

`--hold` keeps the stack up after the screenshots (the UI's address is printed) until Ctrl-C.

The Prefect UI is a JavaScript app and the run page's tabs are switched in the page, so Chromium is driven
over the DevTools protocol (`--remote-debugging-port`, with the `websockets` package Prefect already
depends on): open the page, wait until the run's text has rendered, click the Artifacts tab, capture.
The moments to capture are read from the Prefect API (the run's state, the newest version of each
artifact), never waited for with fixed sleeps. The server must be started with `PREFECT_UI_API_URL` (or
`PREFECT_SERVER_API_PORT`) matching its port, or the UI calls the default `http://127.0.0.1:4200/api` and
shows "Can't connect to Server API".
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
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

    def wait_for_graph(self, timeout: float = 60, settle_s: float = 3.0) -> None:
        """Until the run page has fetched its task graph (`graph-v2`); then let the canvas draw it."""
        probe = "performance.getEntriesByType('resource').some(e => e.name.includes('/graph-v2'))"
        _wait(lambda: self.js(probe), "the run's task graph", timeout)
        time.sleep(settle_s)

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


# The run: six 100-record jobs, two in flight at once. In the slow profile a job spends about 6 s before
# InProgress and 60 s in it (time_scale 0.01: 100 emulated seconds are one real second), long enough for
# the three mid-run screenshots; the default profile takes over once they are taken.
ROWS, RECORDS_PER_JOB, CONCURRENT = 600, 100, 2
LIVE_PROFILE = {"time_scale": 0.01, "submit_s": 100, "validation_s": 200, "queue_s": 300, "record_s": 60}
PREFIX = "docs-ui"
NOT_STARTED = ("waiting", "pending")


class Api:
    """The few Prefect REST reads the script waits on (the UI reads the same)."""

    def __init__(self, api_url: str) -> None:
        import httpx

        self.url = api_url.removesuffix("/")
        self._http = httpx.Client(base_url=self.url, timeout=30)

    @property
    def ui(self) -> str:
        return self.url.removesuffix("/api")

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        response = self._http.get(f"/flow_runs/{flow_run_id}")
        response.raise_for_status()
        return response.json()

    def state(self, flow_run_id: str) -> str:
        return str((self.flow_run(flow_run_id).get("state") or {}).get("type") or "")

    def artifacts(self, flow_run_id: str) -> dict[str, dict[str, Any]]:
        """The newest version of each of the run's keyed artifacts (the jobs table is republished)."""
        response = self._http.post("/artifacts/filter", json={
            "artifacts": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "CREATED_DESC", "limit": 200})
        response.raise_for_status()
        newest: dict[str, dict[str, Any]] = {}
        for artifact in response.json():
            if artifact.get("key"):
                newest.setdefault(artifact["key"], artifact)
        return newest

    def deployment_id(self, name: str) -> str:
        response = self._http.get(f"/deployments/name/{name}")
        response.raise_for_status()
        return str(response.json()["id"])


def _rows(artifact: dict[str, Any] | None) -> list[dict[str, Any]]:
    data = (artifact or {}).get("data")
    rows = json.loads(data) if isinstance(data, str) else data
    return list(rows or [])


def _best_effort(browser: Browser, *texts: str, timeout: float = 120) -> None:
    """Wait for `texts`, but capture anyway if they never show (a mid-run moment does not come back):
    the warning says which screenshot to look at."""
    try:
        browser.wait_for_text(*texts, timeout=timeout)
    except TimeoutError as err:
        print(f"warning: {err}; capturing what the page shows", file=sys.stderr)


def take_form_screenshot(api: Api, out: Path, browser: Browser) -> Path:
    """The deployment's Run > Custom run page, tall enough for every parameter."""
    from tests.e2e.test_deployment import DEPLOYMENT

    browser.resize(1400, 1400)
    browser.open(f"{api.ui}/deployments/deployment/{api.deployment_id(DEPLOYMENT)}/run")
    _best_effort(browser, "Source. CSV, Parquet", "Behaviour. Plan and estimate only")
    # The page scrolls inside the layout: size the window to the tallest scrolled box, then capture.
    height = browser.js("Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight))")
    browser.resize(1400, min(int(height) + 40, 12000))
    _best_effort(browser, "Behaviour. Plan and estimate only")
    path = out / "prefect-ui-form.png"
    browser.screenshot(path)
    browser.resize(1600, 1400)
    return path


def live_moment(api: Api, flow_run_id: str) -> dict[str, Any] | None:
    """The newest jobs table while the run is Running, once it has a Completed job, an InProgress job
    past a tenth of its records and a shard not started yet (waiting for a slot)."""
    if api.state(flow_run_id) != "RUNNING":
        return None
    jobs = api.artifacts(flow_run_id).get(f"{PREFIX}-jobs")
    rows = _rows(jobs)
    statuses = [str(row.get("status") or "") for row in rows]
    going = [row for row in rows if row.get("status") == "InProgress"
             and int(row.get("processed") or 0) >= RECORDS_PER_JOB // 10]
    if "Completed" in statuses and going and any(s.startswith(NOT_STARTED) for s in statuses):
        return jobs
    return None


def take_live_screenshots(api: Api, flow_run_id: str, out: Path, browser: Browser) -> list[Path]:
    """The jobs table, the progress artifact and the run page while the run's jobs are going."""
    try:
        jobs = _wait(lambda: live_moment(api, flow_run_id), "a jobs table with jobs done, in progress and waiting",
                     900)
    except TimeoutError:
        table = _rows(api.artifacts(flow_run_id).get(f"{PREFIX}-jobs"))
        print(f"run state {api.state(flow_run_id)}; last jobs table: {table}", file=sys.stderr)
        raise
    print("mid-run:", ", ".join(f"{r['shard']} {r.get('status')}" for r in _rows(jobs)))
    written = []
    browser.resize(2400, 700)  # the table is wide (a long job ARN)
    browser.open(f"{api.ui}/artifacts/artifact/{jobs['id']}")
    _best_effort(browser, f"{PREFIX}-jobs", "InProgress", "Completed")
    written.append(out / "prefect-ui-jobs-live.png")
    browser.screenshot(written[-1])

    progress = api.artifacts(flow_run_id)[f"{PREFIX}-progress"]
    browser.resize(1600, 500)
    browser.open(f"{api.ui}/artifacts/artifact/{progress['id']}")
    _best_effort(browser, f"{PREFIX}-progress", "ETA", "InProgress")
    written.append(out / "prefect-ui-progress-live.png")
    browser.screenshot(written[-1])

    run = api.flow_run(flow_run_id)
    browser.resize(1600, 1400)
    browser.open(f"{api.ui}/runs/flow-run/{flow_run_id}")
    _best_effort(browser, run["name"], "Running", "waits for a slot")
    try:
        browser.wait_for_graph()
    except TimeoutError as err:
        print(f"warning: {err}", file=sys.stderr)
    written.append(out / "prefect-ui-run-live.png")
    browser.screenshot(written[-1])
    state = api.state(flow_run_id)
    if state != "RUNNING":
        print(f"warning: the run was {state} by the end of the mid-run screenshots", file=sys.stderr)
    return written


def take_screenshots(api: Api, flow_run_id: str, out: Path, browser: Browser) -> list[Path]:
    """The finished run: its page, its Artifacts tab and each artifact's own page."""
    run = api.flow_run(flow_run_id)
    by_key = api.artifacts(flow_run_id)
    prefix = next(k.removesuffix("-progress") for k in by_key if k.endswith("-progress"))
    state = str(run["state"]["name"])
    written = []
    browser.resize(1600, 1400)
    browser.open(f"{api.ui}/runs/flow-run/{flow_run_id}")
    browser.wait_for_text(run["name"], state, "Beginning flow run", timeout=120)
    browser.wait_for_graph()
    written.append(out / "prefect-ui-run.png")
    browser.screenshot(written[-1])

    browser.click_text("Artifacts")
    browser.wait_for_text(*sorted(by_key))
    written.append(out / "prefect-ui-artifacts.png")
    browser.screenshot(written[-1])

    # The jobs table is wide (14 columns, a long job ARN): a wider window shows all of it.
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
        browser.open(f"{api.ui}/artifacts/artifact/{artifact['id']}")
        browser.wait_for_text(f"{prefix}-{suffix}", text)
        written.append(out / name)
        browser.screenshot(written[-1])
    return written


def start_run(stack: Any) -> str:
    """`prefect deployment run` of 600 distinct topics (the answer cache would merge repeats); no --watch."""
    import re

    from tests.e2e.test_deployment import DEPLOYMENT, ROLE_ARN, SAMPLE

    topics = [line.strip() for line in SAMPLE.read_text().splitlines()[1:] if line.strip()]
    source = stack.tmp / "topics-600.csv"
    source.write_text("topic\n" + "".join(f"{topics[i % len(topics)]} (take {i // len(topics) + 1})\n"
                                          for i in range(ROWS)))
    params = {"input_path": source, "prompt_id": "joke_about_topic", "job_name_prefix": PREFIX,
              "output_uri": f"s3://{stack.bucket}/docs", "role_arn": ROLE_ARN, "poll_interval_s": 2,
              "max_records_per_job": RECORDS_PER_JOB, "max_concurrent_jobs": CONCURRENT}
    args = [arg for key, value in params.items() for arg in ("-p", f"{key}={value}")]
    done = stack.prefect("deployment", "run", DEPLOYMENT, *args)
    found = re.search(r"UUID:\s*([0-9a-f-]{36})", done.stdout)
    if not found:
        raise RuntimeError(f"no flow run id in:\n{done.stdout[-3000:]}")
    return found.group(1)


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-url", help="an existing server's API (with --flow-run-id); default: start one")
    parser.add_argument("--flow-run-id", help="a finished run on --api-url")
    parser.add_argument("--out", type=Path, default=DOCS, help="where the PNGs go (default: docs/)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    parser.add_argument("--hold", action="store_true", help="keep the stack up afterwards, until Ctrl-C")
    args = parser.parse_args(argv)
    if not args.chromium:
        parser.error("no chromium on PATH: apt-get install -y chromium (or give --chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.api_url or args.flow_run_id:
        if not (args.api_url and args.flow_run_id):
            parser.error("--api-url and --flow-run-id go together")
        api, browser = Api(args.api_url), Browser(args.chromium)
        try:
            take_form_screenshot(api, args.out, browser)
            take_screenshots(api, args.flow_run_id, args.out, browser)
        finally:
            browser.close()
        return 0

    from tests.e2e.test_deployment import deployed_stack

    with deployed_stack() as stack:
        default_profile = stack.emulator.profile
        stack.emulator.set_profile(LIVE_PROFILE)
        api, browser = Api(stack.api_url), Browser(args.chromium)
        try:
            flow_run_id = start_run(stack)
            print(f"flow run {flow_run_id} started; UI at {stack.url}")
            take_form_screenshot(api, args.out, browser)  # while the worker starts the run
            take_live_screenshots(api, flow_run_id, args.out, browser)
            stack.emulator.set_profile(default_profile)  # the rest of the run at the default pace
            state = _wait(lambda: (s := api.state(flow_run_id)) in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
                          and s, "the end of the run", 900)
            print(f"flow run {flow_run_id} ended {state}")
            take_screenshots(api, flow_run_id, args.out, browser)
        except Exception:
            if not args.hold:
                raise
            traceback.print_exc()  # the stack stays up: retake with --api-url and --flow-run-id
        finally:
            browser.close()
        if args.hold:
            print(f"holding the stack: UI at {stack.url} (Ctrl-C or SIGTERM ends)", flush=True)
            signal.signal(signal.SIGTERM, _interrupt)  # so that `kill` also stops the stack's processes
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
