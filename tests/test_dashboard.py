"""The dashboard at `/`: its routes in process, then a real Chromium against a real server.

The browser tests drive Debian's Chromium through Playwright (no browser download): they open
the page, upload real speech through the drop zone's file input, watch the job through the
queue and the recent jobs, read the transcript through its link, follow a long job's progress
bar and live segment text, cancel a queued job, and use a service with an API token. Every
request the page makes must go to the server itself.

Without Chromium the browser tests skip, or fail when $CI is set. UPDATE_DASHBOARD_SCREENSHOT=1
writes the screenshot of a busy page to docs/dashboard.png (otherwise to a temporary folder).
"""

from __future__ import annotations

import base64
import os
import shutil
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import REPO, FakeEngine, ServerProcess, eval_clip, reference_text, word_error_rate
from test_api import ClientFactory

from service.api import dashboard
from service.app import create_app
from service.settings import Settings

CLIP = "sense_and_sensibility_01_austen_64kb-0890.wav"
CANCEL_CLIP = "LDC93S1.wav"
LATER_CLIP = "61-70968-0000.flac"
TOKEN = "dashboard-test-token"
SCREENSHOT = REPO / "docs" / "dashboard.png"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    # The closed network here refuses Chromium's own background connections; keep it quiet.
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Records, every 100 ms, each running job's progress bar and the live text under it.
SAMPLER = """
window.__samples = [];
window.__live = {};
setInterval(() => {
  for (const bar of document.querySelectorAll("progress.job-progress")) {
    const id = bar.dataset.jobId;
    const box = document.querySelector(`.live-text[data-job-id="${CSS.escape(id)}"]`);
    const segments = box ? Array.from(box.querySelectorAll(".seg")) : [];
    const text = segments.map((s) => s.lastChild.textContent).join(" ");
    window.__samples.push({ job: id, progress: bar.value, text: text.trim().length });
    window.__live[id] = text;
  }
}, 100);
"""

# Pretends the tab was hidden (or shown again): what a browser does when the user switches tabs.
HIDE = """() => {
  Object.defineProperty(document, "hidden", { configurable: true, get: () => HIDDEN });
  document.dispatchEvent(new Event("visibilitychange"));
}"""
# Drops a file on the drop zone as a drag from the desktop would.
DROP = """([name, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type: "audio/wav" }));
  const zone = document.getElementById("drop-zone");
  for (const type of ["dragenter", "dragover", "drop"]) {
    zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
  }
}"""


# -- in process: routes, headers, the token exemption ----------------------------------------


async def test_page_and_assets_are_served_with_a_strict_policy(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    client = await aiohttp_client(create_app(Settings(storage_dir=tmp_path / "s"), engine=FakeEngine()))
    page = await client.get("/")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    html = await page.text()
    assert 'id="file-input"' in html and "/static/dashboard.js" in html
    assert "http://" not in html and "https://" not in html  # nothing from other hosts
    for name, kind in (
        ("dashboard.js", "text/javascript"),
        ("dashboard.css", "text/css"),
        ("icon.svg", "image/svg"),
    ):
        resp = await client.get(f"/static/{name}")
        assert resp.status == 200, name
        assert resp.headers["Content-Type"].startswith(kind)
    script = (dashboard.ASSETS / "dashboard.js").read_text()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script
    for bad in ("/static/nope.js", "/static/..%2Fdashboard.py", "/static/index.html", "/static/.hidden.js"):
        resp = await client.get(bad)
        assert resp.status == 404, bad
        assert "error" in await resp.json()


async def test_assets_answer_whole_or_not_modified(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    """Every answer is the file, a 304, or a JSON error: odd Range or If-Match headers change nothing."""
    client = await aiohttp_client(create_app(Settings(storage_dir=tmp_path / "s"), engine=FakeEngine()))
    full = await client.get("/static/dashboard.js")
    body, etag = await full.read(), full.headers["ETag"]
    assert body == (dashboard.ASSETS / "dashboard.js").read_bytes()
    assert (await client.get("/static/dashboard.js", headers={"If-None-Match": etag})).status == 304
    for headers in ({"Range": "bytes=999999-"}, {"If-Match": '"other"'}, {"If-None-Match": '"stale"'}):
        resp = await client.get("/static/dashboard.js", headers=headers)
        assert resp.status == 200 and await resp.read() == body, headers


async def test_page_and_assets_need_no_token_but_the_api_does(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    settings = Settings(storage_dir=tmp_path / "s", api_token=TOKEN)
    client = await aiohttp_client(create_app(settings, engine=FakeEngine()))
    for path in ("/", "/static/dashboard.js", "/static/dashboard.css", "/health"):
        assert (await client.get(path)).status == 200, path
    for path in ("/jobs", "/queue", "/models", "/static/../jobs", "/download/x"):
        assert (await client.get(path)).status == 401, path
    assert (await client.get("/static/..%2Fjobs")).status == 404  # open prefix, but no such asset
    assert (await client.get("/jobs", headers={"Authorization": f"Bearer {TOKEN}"})).status == 200


def test_every_dashboard_file_is_package_data() -> None:
    """An installed wheel must carry the page: pyproject's package-data covers each file."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["service"]
    service_dir = REPO / "service"
    covered = {p for pattern in patterns for p in service_dir.glob(pattern)}
    files = {p for p in dashboard.ASSETS.iterdir() if p.is_file()}
    assert files and files <= covered, sorted(str(p) for p in files - covered)


# -- a real browser --------------------------------------------------------------------------


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    reason = None
    if not Path(path).is_file():
        reason = f"Chromium is not installed ({path}); apt-get install -y chromium"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright package is missing: pip install -e '.[dev]'"
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Session:
    """One browser context on the dashboard, recording requests, page errors and dialogs."""

    def __init__(self, browser: Any, server: ServerProcess, token: str | None = None) -> None:
        self.server = server
        self.context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        self.context.set_default_timeout(30_000)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.dialogs: list[tuple[str, str]] = []
        self.context.on("request", lambda request: self.requests.append(request.url))
        self.page = self.context.new_page()
        self.page.add_init_script(SAMPLER)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)

        def on_dialog(dialog: Any) -> None:
            self.dialogs.append((dialog.type, dialog.message))
            if dialog.type == "prompt":
                dialog.accept(token or "")
            else:
                dialog.accept()

        self.page.on("dialog", on_dialog)

    def open(self) -> Any:
        self.page.goto(self.server.url + "/")
        return self.page

    def recent_row(self, name: str) -> Any:
        return self.page.locator("#recent tr", has_text=name)

    def check_clean(self, unauthorized: int = 0) -> None:
        """Only the server was asked for anything, and the page threw nothing.

        `unauthorized`: how many 401s the browser may log (the calls before the token is known).
        """
        own = (self.server.url + "/", "blob:" + self.server.url + "/", "data:")
        foreign = [url for url in self.requests if not url.startswith(own)]
        assert foreign == [], foreign
        assert self.requests, "no requests were recorded"
        refused = [e for e in self.errors if "status of 401" in e]
        assert len(refused) <= unauthorized, self.errors
        assert [e for e in self.errors if e not in refused] == [], self.errors

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def session(browser: Any) -> Iterator[Callable[..., Session]]:
    opened: list[Session] = []

    def make(server: ServerProcess, token: str | None = None) -> Session:
        opened.append(Session(browser, server, token))
        return opened[-1]

    yield make
    for s in opened:
        s.close()


@pytest.mark.slow
def test_upload_through_the_page_and_read_the_transcript(server_factory: Any, session: Any) -> None:
    from playwright.sync_api import expect

    server: ServerProcess = server_factory().start()
    s: Session = session(server)
    page = s.open()
    expect(page.locator("#health-status")).to_have_text("ok")
    expect(page.locator("#health-engine")).to_have_text("openai-whisper")
    expect(page.locator("#health-device")).to_have_text("cpu")
    expect(page.locator("#models [data-model='tiny.en']")).to_contain_text("default")
    expect(page.locator("#recent-empty")).to_be_visible()

    page.set_input_files("#file-input", str(eval_clip(CLIP)))
    expect(page.locator("#uploads li[data-state='done']")).to_contain_text("queued as")
    row = s.recent_row(CLIP)
    expect(row.locator(".status")).to_have_text("completed", timeout=120_000)
    for fmt in ("txt", "srt", "vtt", "tsv", "json", "verbose_json"):
        expect(row.locator(f"a[data-format='{fmt}']")).to_be_visible()
    expect(row.locator("button.cancel")).to_have_count(0)

    with page.expect_popup() as popup:
        row.locator("a[data-format='txt']").click()
    transcript = popup.value
    transcript.wait_for_load_state()
    assert transcript.url.startswith(f"{server.url}/download/")
    text = transcript.locator("body").inner_text()
    assert word_error_rate(reference_text(CLIP), text) < 0.25, text
    transcript.close()

    # A hidden tab polls nothing; shown again, it refreshes at once.
    page.evaluate(HIDE.replace("HIDDEN", "true"))
    page.wait_for_timeout(300)
    before = len(s.requests)
    page.wait_for_timeout(4500)
    assert s.requests[before:] == []
    page.evaluate(HIDE.replace("HIDDEN", "false"))
    page.wait_for_timeout(1000)
    assert any("/queue" in url for url in s.requests[before:])

    # A narrow window: one column, no sideways scrolling.
    page.set_viewport_size({"width": 390, "height": 800})
    expect(row.locator(".status")).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 1
    s.check_clean()


@pytest.mark.slow
def test_live_progress_segments_and_cancel(
    server_factory: Any, session: Any, long_wav: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    server: ServerProcess = server_factory(extra_args=["--beam-size", "1"]).start()
    s: Session = session(server)
    page = s.open()
    expect(page.locator("#health-status")).to_have_text("ok")
    # One upload of three: the long one runs first, the second is cancelled while it waits.
    page.set_input_files(
        "#file-input", [str(long_wav), str(eval_clip(CANCEL_CLIP)), str(eval_clip(LATER_CLIP))]
    )
    waiting = page.locator("#queue tr", has_text=CANCEL_CLIP)
    waiting.locator("button.cancel").click()
    expect(s.recent_row(CANCEL_CLIP).locator(".status")).to_have_text("cancelled")
    assert ("confirm", f"Cancel {CANCEL_CLIP}?") in s.dialogs
    expect(page.locator("#queue tr", has_text=CANCEL_CLIP)).to_have_count(0)

    # The running job's bar moves and its segments show up while it still runs.
    page.wait_for_function(
        "() => window.__samples.some((x) => x.progress > 0 && x.progress < 1 && x.text > 0)",
        timeout=120_000,
    )
    page.wait_for_timeout(300)  # let the bar's animation settle
    target = SCREENSHOT if os.environ.get("UPDATE_DASHBOARD_SCREENSHOT") else tmp_path / "dashboard.png"
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000

    long_row = s.recent_row(long_wav.name)
    expect(long_row.locator(".status")).to_have_text("completed", timeout=180_000)
    expect(s.recent_row(LATER_CLIP).locator(".status")).to_have_text("completed", timeout=120_000)
    samples: list[dict[str, Any]] = page.evaluate("window.__samples")
    job_id = long_row.get_attribute("data-job-id")
    assert job_id
    seen = [x["progress"] for x in samples if x["job"] == job_id]
    assert seen == sorted(seen), "the progress bar went backwards"
    assert len(set(seen)) >= 2 and any(0 < p < 1 for p in seen), sorted(set(seen))
    assert any(x["text"] > 0 and x["progress"] < 1 for x in samples if x["job"] == job_id)

    # The live text is the transcript, segment by segment.
    live = page.evaluate("(id) => window.__live[id]", job_id)
    final = requests.get(f"{server.url}/download/{job_id}?format=txt", timeout=10).text
    assert word_error_rate(final, live) < 0.05, (live, final)
    later = requests.get(f"{server.url}/jobs?status=cancelled", timeout=10).json()["jobs"]
    assert [j["filename"] for j in later] == [CANCEL_CLIP]
    s.check_clean()


@pytest.mark.slow
def test_with_an_api_token_the_page_asks_once_and_then_works(
    server_factory: Any, session: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    server: ServerProcess = server_factory(extra_args=["--api-token", TOKEN]).start()
    assert requests.get(f"{server.url}/", timeout=10).status_code == 200
    assert requests.get(f"{server.url}/static/dashboard.js", timeout=10).status_code == 200
    assert requests.get(f"{server.url}/jobs", timeout=10).status_code == 401

    s: Session = session(server, token=TOKEN)
    page = s.open()
    expect(page.locator("#health-status")).to_have_text("ok")  # /health is open
    expect(page.locator("#models [data-model='tiny.en']")).to_be_visible()
    prompts = [d for d in s.dialogs if d[0] == "prompt"]
    assert len(prompts) == 1, s.dialogs
    assert page.evaluate("localStorage.getItem('transcription-dashboard.api-token')") == TOKEN

    # Dropped on the zone this time, at high priority.
    page.select_option("#priority", "high")
    page.evaluate(DROP, [CLIP, base64.b64encode(eval_clip(CLIP).read_bytes()).decode()])
    row = s.recent_row(CLIP)
    expect(row.locator(".status")).to_have_text("completed", timeout=120_000)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    (job,) = requests.get(f"{server.url}/jobs", headers=auth, timeout=10).json()["jobs"]
    assert (job["filename"], job.get("priority_name")) == (CLIP, "high")
    # A plain link cannot send the header: with a token the page fetches and saves the file.
    with page.expect_download() as download:
        row.locator("a[data-format='txt']").click()
    saved = tmp_path / "transcript.txt"
    download.value.save_as(saved)
    assert download.value.suggested_filename.endswith(".txt")
    assert word_error_rate(reference_text(CLIP), saved.read_text()) < 0.25

    # The token is kept: a reload asks nothing.
    page.reload()
    expect(s.recent_row(CLIP).locator(".status")).to_have_text("completed")
    assert len([d for d in s.dialogs if d[0] == "prompt"]) == 1, s.dialogs
    s.check_clean(unauthorized=3)  # /queue, /jobs and /models, once, before the prompt
