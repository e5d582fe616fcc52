"""The web page at `/`: served from the package, self-contained, and working in a real browser.

The browser test drives Debian's Chromium through Playwright (never a downloaded browser)
against `w2v serve` with the embedded queue: upload → train (live progress over SSE) →
evaluate → query, checking what the page shows against the API's own answers, and saves the
screenshot the README shows (docs/screenshot.png).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.settings import Settings
from tests.test_service_e2e import stop_group

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "app" / "static"
SCREENSHOT = ROOT / "docs" / "screenshot.png"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(store=tmp_path / "store", broker_url=None))) as c:
        yield c


def test_the_page_and_its_assets_are_served(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-cache"
    html = r.text
    for element in ('id="train-form"', 'id="loss-chart"', 'id="models-table"', 'id="results-table"', 'id="scatter"'):
        assert element in html
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert sorted(assets) == ["/static/app.js", "/static/style.css"]
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert js.headers["cache-control"] == "no-cache" and js.headers.get("etag")
    assert client.get("/static/app.js", headers={"If-None-Match": js.headers["etag"]}).status_code == 304
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/../main.py").status_code == 404


def test_the_page_works_offline() -> None:
    """No CDN, no web fonts, no remote scripts: every reference is to this server."""
    remote = re.compile(
        r"""(?:src|href)\s*=\s*["'](?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import|fetch\(\s*["']https?:"""
    )
    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not remote.search(text), path.name


def test_the_page_loads_without_an_api_key_but_the_data_needs_one(tmp_path: Path) -> None:
    settings = Settings(store=tmp_path / "store", broker_url=None, api_keys=["s3cret"])
    with TestClient(create_app(settings)) as c:
        assert c.get("/").status_code == 200
        assert c.get("/static/app.js").status_code == 200
        assert c.get("/models").status_code == 401
        assert c.get("/models", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_the_api_docs_load_their_scripts_from_this_server(tmp_path: Path) -> None:
    """/docs and /redoc need the key; the viewers' scripts are public, like the page's, and local."""
    settings = Settings(store=tmp_path / "store", broker_url=None, api_keys=["s3cret"])
    with TestClient(create_app(settings)) as c:
        for page in ("/docs", "/redoc"):
            assert c.get(page).status_code == 401
            html = c.get(page, headers={"X-API-Key": "s3cret"}).text
            refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", html)
            assert refs and all(ref.startswith("/static/docs/") for ref in refs), refs
            for ref in refs:
                r = c.get(ref)
                assert r.status_code == 200 and len(r.content) > 1000, ref
            assert "googleapis" not in html and "cdn." not in html


# ------------------------------------------------------------------------------------ in a browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(tmp_path: Path, **settings: str) -> Iterator[tuple[str, Path]]:
    """`w2v serve` (API + embedded worker) on a free port, stopped with its whole process group."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("W2V_")}
    env.update(settings)
    log_path = tmp_path / "serve.log"
    argv = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--store", str(tmp_path / "store")]
    with log_path.open("wb") as log:
        # cwd: a folder without a .env, so a developer's compose settings cannot leak in.
        proc = subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text(errors="replace")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the service did not become ready"
            time.sleep(0.2)
        yield base, log_path
    finally:
        stop_group(proc, grace=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the worker child, should it have outlived serve
        print(log_path.read_text(errors="replace")[-5000:])  # shown only when the test failed


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    # Frequent progress writes, so even a short job draws a loss curve of several points.
    # One training thread keeps the job running long enough (several seconds) for a real curve.
    with serving(tmp_path, W2V_PROGRESS_INTERVAL_S="0.2", W2V_THREADS="1") as running:
        yield running


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium chromium-driver; .ci/run does)")
    return path


@contextlib.contextmanager
def browser_page(chromium: str, profile: Path) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra) is not installed")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),  # a fresh profile every run
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
            device_scale_factor=1,
        )
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
            assert errors == [], errors
        finally:
            context.close()


def pca_scores(vectors: np.ndarray) -> np.ndarray:
    centred = vectors - vectors.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    return u[:, :2] * s[:2]


def same_up_to_sign(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    return all(min(np.abs(a[:, k] - b[:, k]).max(), np.abs(a[:, k] + b[:, k]).max()) < tol for k in range(2))


def table(page: Any, selector: str) -> list[list[str]]:
    rows: list[list[str]] = page.eval_on_selector_all(
        f"{selector} tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))"
    )
    return rows


@pytest.mark.slow
def test_upload_train_and_query_in_a_browser(service: tuple[str, Path], chromium: str, tmp_path: Path) -> None:
    from gensim.test.utils import datapath

    base, log_path = service
    api = httpx.Client(base_url=base, timeout=30)
    corpus = tmp_path / "lee.txt"
    text = Path(datapath("lee_background.cor")).read_bytes().rstrip(b"\n") + b"\n"
    corpus.write_bytes(text * 32)  # ~2 M words: on a fast CPU, smaller jobs end before the chart has points
    pairs_file = Path(datapath("wordsim353.tsv"))

    with browser_page(chromium, tmp_path / "profile") as page:
        page.goto(base + "/")
        page.wait_for_selector("#status.ok")
        assert page.inner_text("#status") == "ready"
        assert "No models yet" in page.inner_text("#models-table")

        # ---- upload and train
        page.set_input_files("#corpus-file", str(corpus))
        page.fill("#train-name", "lee")
        for name, value in {"vector_size": "48", "min_count": "2", "epochs": "12", "window": "5"}.items():
            page.fill(f"input[name={name}]", value)
        page.click("#train-button")
        page.wait_for_selector("#job-state.running, #job-state.succeeded", timeout=60_000)
        page.wait_for_selector("#job-state.succeeded", timeout=180_000)

        jobs = api.get("/jobs").json()
        assert len(jobs) == 1
        job = jobs[0]
        assert job["state"] == "succeeded" and job["name"] == "lee"
        assert job["config"]["vector_size"] == 48 and job["config"]["epochs"] == 12
        assert page.get_attribute("#job-name", "title") == job["job_id"]
        assert page.inner_text("#job-percent") == "100.0 %"
        assert page.inner_text("#job-epoch") == "12 / 12"
        assert re.fullmatch(r"\d+(\.\d+)? (M|k)", page.inner_text("#job-speed"))
        assert re.fullmatch(r"\d+\.\d{4}", page.inner_text("#job-loss"))
        # The loss curve was drawn from the live events: several points, and ink on the canvas.
        points = int(page.get_attribute("#loss-chart", "data-points") or 0)
        assert points >= 4, points
        inked = page.evaluate(
            """() => { const c = document.querySelector('#loss-chart');
               const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
               for (let i = 0; i < d.length; i += 4) if (d[i] < 120 && d[i + 2] > 180 && d[i + 3] > 200) n++;
               return n; }"""
        )
        assert inked > 200

        # ---- the new model is listed and selected
        model_id = job["model_id"]
        meta = api.get(f"/models/{model_id}").json()
        row = page.wait_for_selector(f"#models-table tr[data-model-id='{model_id}']")
        assert row is not None and "selected" in (row.get_attribute("class") or "")
        cells = table(page, "#models-table")[0]
        assert cells[1] == "lee" and cells[2] == model_id[:8]
        assert cells[4] == f"{meta['vocab_size']:,}" and cells[5] == "48"
        assert cells[7] == f"{meta['training']['final_loss']:.4f}"

        # ---- evaluate on WordSim353: the score shown is the API's
        with page.expect_file_chooser() as chooser:
            page.click(f"#models-table tr[data-model-id='{model_id}'] button")
        chooser.value.set_files(str(pairs_file))
        tag = page.wait_for_selector(f"#models-table tr[data-model-id='{model_id}'] .score-tag")
        assert tag is not None
        evaluations = api.get(f"/models/{model_id}").json()["evaluations"]
        spearman = next(e["result"]["spearman"] for e in evaluations if e["kind"] == "word_pairs")
        assert tag.inner_text() == f"pairs \N{GREEK SMALL LETTER RHO} {spearman:.3f}"

        # ---- an analogy, and an unknown word
        a, b, c = "Australia", "Sydney", "Afghanistan"
        expected = api.get("/analogy", params={"a": a, "b": b, "c": c, "topn": 5}).json()["results"]
        page.fill("#similar-topn", "5")
        page.fill("#analogy-a", a)
        page.fill("#analogy-b", b)
        page.fill("#analogy-c", c)
        page.click("#analogy-form button")
        page.wait_for_function("document.querySelector('#results-caption').textContent.includes('Afghanistan')")
        rows = table(page, "#results-table")
        assert [r[1] for r in rows] == [h["word"] for h in expected]
        page.fill("#similar-word", "qqzzxq")
        page.click("#similar-form button")
        page.wait_for_selector("#query-message.error")
        assert "not in the vocabulary of model" in page.inner_text("#query-message")

        # ---- nearest words, and their PCA projection
        page.fill("#similar-topn", "10")
        page.fill("#similar-word", "government")
        page.click("#similar-form button")
        page.wait_for_function("document.querySelector('#results-caption').textContent.includes('government')")
        page.wait_for_function("document.querySelectorAll('#projection-table tbody tr').length === 11")
        expected = api.get("/similar", params={"word": "government", "topn": 10, "model": model_id}).json()
        rows = table(page, "#results-table")
        assert [r[1] for r in rows] == [h["word"] for h in expected["results"]]
        assert [r[2].split()[-1] for r in rows] == [f"{h['score']:.4f}" for h in expected["results"]]
        assert page.inner_text("#query-message") == ""

        projected = table(page, "#projection-table")
        words = [r[0] for r in projected]
        assert words == ["government"] + [h["word"] for h in expected["results"]]
        shown = np.array([[float(r[1]), float(r[2])] for r in projected])
        unit = np.array([api.get("/vector", params={"word": w, "norm": True}).json()["vector"] for w in words])
        assert same_up_to_sign(shown, pca_scores(unit), tol=2e-4)
        assert page.get_attribute("#scatter", "data-points") == "11"

        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)

    # The worker's log lines for this job carry its id.
    job_lines = [line for line in log_path.read_text(errors="replace").splitlines() if f"job={job['job_id']}" in line]
    assert any("training on" in line for line in job_lines), job_lines

    # What the run left in /metrics: the SSE stream by its route, the job, the model in memory.
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(api.get("/metrics").text)
        for s in family.samples
    }
    events = frozenset({"method": "GET", "route": "/jobs/{job_id}/events", "status": "200"}.items())
    assert samples[("w2v_http_requests_total", events)] >= 1
    assert samples[("w2v_jobs", frozenset({"state": "succeeded"}.items()))] == 1
    assert samples[("w2v_models_loaded", frozenset())] == 1


@pytest.mark.slow
def test_the_page_asks_for_an_api_key_and_sends_it(chromium: str, tmp_path: Path) -> None:
    with serving(tmp_path, W2V_API_KEYS="s3cret") as (base, _), browser_page(chromium, tmp_path / "profile") as page:
        page.goto(base + "/")
        dialog = page.wait_for_selector("#key-dialog[open]")  # the first data request came back 401
        assert dialog is not None and "needs an API key" in page.inner_text("#key-reason")
        page.fill("#key-input", "s3cret")
        page.click("#key-form button[value=save]")
        page.wait_for_function("document.querySelector('#models-table').textContent.includes('No models yet')")
        assert page.evaluate("localStorage.getItem('w2v.apiKey')") == "s3cret"
        page.reload()  # the key is remembered: no dialog this time
        page.wait_for_function("document.querySelector('#jobs-table').textContent.includes('No jobs yet')")
        assert page.query_selector("#key-dialog[open]") is None


def test_the_api_docs_render_with_no_network_beyond_the_service(chromium: str, tmp_path: Path) -> None:
    """Swagger UI and ReDoc draw the API's operations while every other host is unreachable."""
    with serving(tmp_path) as (base, _), browser_page(chromium, tmp_path / "profile") as page:
        elsewhere: list[str] = []

        def only_the_service(route: Any) -> None:
            if route.request.url.startswith(base + "/"):
                route.continue_()
            else:
                elsewhere.append(route.request.url)
                route.abort()

        page.route("**/*", only_the_service)
        page.goto(base + "/docs")
        page.wait_for_selector(".opblock-summary-path[data-path='/similar']", timeout=30_000)
        assert page.locator(".opblock").count() >= 15
        assert elsewhere == []
        page.goto(base + "/redoc")
        page.wait_for_function("document.body.innerText.includes('/similar/batch')", timeout=30_000)
        # ReDoc's "API docs by Redocly" footer asks its CDN for a logo, which hides itself when
        # that fails; nothing else may leave the service.
        assert set(elsewhere) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}
