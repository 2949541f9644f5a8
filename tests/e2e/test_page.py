"""The web page in a real browser: Playwright's Python package driving Debian's chromium
(``make test`` installs it as root; elsewhere these tests skip and say why) against a real
server serving the repository's store.

Every test also checks that the page logged no console error, threw no exception and asked
no other host for anything. Screenshots go to ``JPEGWEIGHTS_SCREENSHOTS`` when it is set
(``make screenshots`` sets it to docs/images), else to a temporary folder.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import simplejpeg

from tests.conftest import BUNDLED, ROOT, bundled_store, running_server, server_process

CHROMIUM = Path("/usr/bin/chromium")
STORE = ROOT / "models"
PRETRAINED = all((STORE / m / "model.jpw").is_file() for m in ("mobilenet_v2", "all-minilm-l6-v2"))
CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}

playwright = pytest.importorskip(
    "playwright.sync_api", reason="Playwright's Python package is not installed (requirements.lock has it: `make test`)"
)
pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason="no /usr/bin/chromium: `make test` installs Debian's chromium when run as root"
)
needs_pretrained = pytest.mark.skipif(
    not PRETRAINED, reason="the pretrained models are not imported: `make pretrained` (make test does it)"
)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("JPEGWEIGHTS_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def store_server(tmp_path_factory):
    """A server of the bundled store (all four models when `make` imported the pretrained ones)."""
    store = bundled_store(tmp_path_factory.mktemp("store"))
    with running_server(tmp_path_factory.mktemp("cache"), model_dir=store) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()


class Watched:
    """A page with its console errors, uncaught exceptions and every URL it requested."""

    def __init__(self, browser, server: str, allowed_errors: str | None = None):
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.server, self.allowed = server, re.compile(allowed_errors) if allowed_errors else None
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(server + "/")

    def check(self) -> None:
        errors = [e for e in self.errors if not (self.allowed and self.allowed.search(e))]
        assert not errors, errors
        origin = urlsplit(self.server).netloc
        elsewhere = [u for u in self.requests if not u.startswith(("blob:", "data:")) and urlsplit(u).netloc != origin]
        assert not elsewhere, elsewhere
        self.page.close()


@pytest.fixture
def watched(browser, store_server):
    pages: list[Watched] = []

    def open_page(server: str = store_server, allowed_errors: str | None = None) -> Watched:
        pages.append(Watched(browser, server, allowed_errors))
        return pages[-1]

    yield open_page
    for w in pages:
        w.check()


def coded_picture(page, shown: str | None = None) -> str:
    """The coded picture's pixels (a hash of them), once it is shown (as ``shown`` says)."""
    if shown is not None:
        page.wait_for_selector(f"#g-coded[data-shown='{shown}']")
    page.wait_for_function(
        "document.getElementById('g-coded').complete && document.getElementById('g-coded').naturalWidth > 0"
    )
    return page.evaluate(
        """() => { const img = document.getElementById('g-coded'), c = document.createElement('canvas');
                   c.width = img.naturalWidth; c.height = img.naturalHeight;
                   const x = c.getContext('2d'); x.drawImage(img, 0, 0);
                   const d = x.getImageData(0, 0, c.width, c.height).data; let h = 0;
                   for (let i = 0; i < d.length; i += 4) h = (h * 31 + d[i]) >>> 0;
                   return `${c.width}x${c.height}:${h}`; }"""
    )


def test_the_page_lists_the_models_and_shows_layer_1_as_28x28_tiles_at_quality_20(watched, shots):
    w = watched()
    page = w.page
    page.wait_for_selector("#models-table tbody tr")
    table = page.inner_text("#models-table")
    assert "mnist-mlp (default)" in table and "407,050" in table and "1,628,200 B" in table and "30,038 B" in table
    if importlib.util.find_spec("onnxruntime"):  # in memory: the dense weights, and ONNX Runtime's copy
        assert table.count("1,628,200 B") == 1 and "3,256,400 B" in table
    else:  # float32, and in memory: the server decodes to dense by default
        assert table.count("1,628,200 B") == 2
    assert "accuracy: q1 " in table and "97.45%" in table  # the report's figures per quality
    if PRETRAINED:  # `make pretrained` measures theirs: jpegweights fidelity
        assert "kl: q5 " in table and "cosine: q5 " in table
    assert coded_picture(page, "1.weight q20 page 1").startswith("463x927:")
    assert page.input_value("#g-tensor") == "1.weight"  # 512 tiles of 28x28, 16 across, 1-pixel gaps
    figures = page.inner_text("#g-figures")
    assert figures.startswith("q20: package 30,038 B") and "test accuracy 97.45%" in figures, figures
    assert "JPEG q20, 20,750 B" in page.inner_text("#g-tensor-figures")
    assert page.is_visible("#g-original") and page.is_visible("#g-difference")
    page.locator("#gallery").screenshot(path=str(shots / "gallery.jpg"), type="jpeg", quality=85)  # 1.5 MB as a PNG


def test_moving_the_quality_slider_changes_the_tiles_and_the_size(watched):
    page = watched().page
    before = coded_picture(page, "1.weight q20 page 1")
    page.focus("#g-quality")
    page.keyboard.press("ArrowLeft")  # one stop down: q10
    page.wait_for_function("document.getElementById('g-figures').textContent.startsWith('q10: package')")
    assert "19,580 B" in page.inner_text("#g-figures") and "test accuracy 96.47%" in page.inner_text("#g-figures")
    after = coded_picture(page, "1.weight q10 page 1")
    assert after != before and after.split(":")[0] == before.split(":")[0]
    page.keyboard.press("End")  # the top stop: q100
    page.wait_for_function("document.getElementById('g-figures').textContent.startsWith('q100: package')")
    assert "306,048 B" in page.inner_text("#g-figures")


def settled(page) -> None:
    """The gallery's pictures are in: the page's layout no longer moves."""
    page.wait_for_selector("#g-coded[data-shown]")
    page.wait_for_function(
        "[...document.querySelectorAll('.pictures img')].every(i => i.closest('figure').hidden "
        "|| (i.complete && i.naturalWidth > 0))"
    )


def draw(page, strokes: list[list[tuple[float, float]]]) -> None:
    settled(page)
    page.locator("#digit").scroll_into_view_if_needed()
    box = page.locator("#digit").bounding_box()
    for stroke in strokes:
        (x, y), rest = stroke[0], stroke[1:]
        page.mouse.move(box["x"] + x, box["y"] + y)
        page.mouse.down()
        for x, y in rest:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=12)
        page.mouse.up()


def test_a_seven_drawn_with_the_mouse_is_read_as_7(watched, shots):
    page = watched().page
    page.wait_for_selector("#digit-model option", state="attached")
    draw(page, [[(70, 60), (215, 60), (130, 235)]])
    for name in ("mnist-mlp", "mnist-cnn"):
        page.select_option("#digit-model", name)
        page.evaluate("document.getElementById('digit-result').replaceChildren()")
        page.click("#digit-predict")
        page.wait_for_selector("#digit-result .top1")
        assert page.inner_text("#digit-result .top1") == "7", (name, page.inner_text("#digit-result"))
        assert re.search(r"\d+ ms round trip", page.inner_text("#digit-result"))
    page.locator("#digit-card").screenshot(path=str(shots / "digit.png"))


def test_an_empty_canvas_and_a_dropped_non_image_get_messages(watched):
    page = watched().page
    page.wait_for_selector("#digit-model option", state="attached")
    page.click("#digit-predict")
    assert page.inner_text("#digit-result .message") == "the canvas is empty: draw a digit first"
    page.evaluate(
        """() => { const dt = new DataTransfer();
                   dt.items.add(new File(['just text'], 'notes.txt', {type: 'text/plain'}));
                   document.getElementById('drop').dispatchEvent(
                       new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true})); }"""
    )
    page.wait_for_selector("#photo-result .message")
    assert page.inner_text("#photo-result .message") == '"notes.txt" is not a JPEG, PNG or WebP image: drop a photo'
    page.fill("#sentences", "only one line")
    if page.is_enabled("#text-predict"):
        page.click("#text-predict")
        assert page.inner_text("#text-result .message") == "type at least two sentences, one per line"


@needs_pretrained
def test_a_photo_picked_in_the_page_is_classified_as_a_cat(watched, shots):
    page = watched().page
    page.wait_for_selector("#photo-model option", state="attached")
    assert page.input_value("#photo-model") == "mobilenet_v2"
    page.set_input_files("#photo-file", str(ROOT / "examples" / "cat.jpg"))
    page.wait_for_selector("#photo-result .top1", timeout=30_000)
    assert page.inner_text("#photo-result .top1") in CAT_CLASSES
    assert len(page.locator("#photo-result li").all()) == 5
    page.locator("#photo-card").screenshot(path=str(shots / "photo.png"))


@needs_pretrained
def test_typed_sentences_get_their_similarities(watched):
    page = watched().page
    page.wait_for_selector("#text-model option", state="attached")
    page.click("#text-predict")
    page.wait_for_selector("#text-result table", timeout=30_000)
    cells = page.locator("#text-result table tr").all()
    row1 = [float(c) for c in cells[1].locator("td.num").all_inner_texts()]
    assert row1[0] == pytest.approx(1, abs=1e-3) and row1[1] > row1[2] + 0.2  # cat~kitten, not cat~markets
    assert "384-dimensional" in page.inner_text("#text-result")


def test_live_figures_count_the_requests_made(watched, store_server):
    import httpx

    page = watched().page
    page.wait_for_function("document.getElementById('status').textContent === 'live'")
    for _ in range(20):
        httpx.post(f"{store_server}/predict", json={"inputs": [[0] * 784]}, timeout=30)
    page.wait_for_function(
        "Number(document.getElementById('live-total').textContent.replace(/,/g, '')) >= 20", timeout=10_000
    )
    page.wait_for_function(
        (
            "document.getElementById('live-batch').textContent !== '–' || "
            "document.getElementById('live-rps').textContent !== '0.0'"
        ),
        timeout=10_000,
    )


def test_a_server_that_went_down_is_said_so_on_the_page(browser, watched, tmp_path):
    with server_process(tmp_path / "cache") as (url, proc):
        w = watched(url, allowed_errors=r"net::ERR_CONNECTION_REFUSED")
        page = w.page
        page.wait_for_selector("#g-coded[src]")
        draw(page, [[(140, 40), (140, 240)]])
        proc.terminate()
        proc.wait(10)
        page.click("#digit-predict")
        page.wait_for_selector("#digit-result .message")
        assert "cannot reach the server" in page.inner_text("#digit-result .message")
        page.wait_for_function("document.getElementById('status').textContent === 'unreachable'", timeout=10_000)
        assert "cannot reach the server" in page.inner_text("#live-message")


def test_with_a_token_the_page_asks_for_it_and_then_works(watched, tmp_path):
    with running_server(tmp_path / "cache", env={"JPEGWEIGHTS_TOKEN": "s3cret"}) as url:
        page = watched(url, allowed_errors=r"status of 401").page
        page.wait_for_selector("#token-form", state="visible")
        assert "needs a bearer token" in page.inner_text("#models-message")
        page.fill("#token", "s3cret")
        page.click("#token-form button")
        page.wait_for_selector("#models-table tbody tr")
        coded_picture(page)
        assert page.is_hidden("#models-message")


@pytest.mark.parametrize(
    "path, ready", [("/docs", ".swagger-ui .info .title"), ("/redoc", "redoc-wrap h1, .api-info h1, h1")]
)
def test_the_api_docs_render_with_no_other_host(watched, store_server, path, ready):
    page = watched().page
    page.goto(store_server + path)
    page.wait_for_selector(ready, timeout=20_000)
    assert "jpegweights" in page.inner_text("body")
    page.wait_for_selector("text=/predict", timeout=20_000)


# ---------------------------------------------------------------- the page as a client: it fetches a
# package, checks its SHA-256, decodes the atlases with Chromium's own JPEG decoder and runs the MNIST
# models in JavaScript (static/jpw.js); its answers are the server's

LOCAL_MODELS = ("mnist-mlp", "mnist-cnn")


@pytest.mark.parametrize("name", LOCAL_MODELS)
def test_local_answers_are_the_servers_on_100_test_digits(watched, store_server, mnist_test, name):
    page = watched().page
    page.wait_for_selector("#models-table tbody tr")
    digits = mnist_test.images[:100].reshape(100, 784).int().tolist()
    local = np.array(
        page.evaluate("async ([n, ds]) => Promise.all(ds.map((d) => jpwLocal.predict(n, d)))", [name, digits])
    )
    r = httpx.post(f"{store_server}/predict?model={name}", json={"inputs": digits, "probabilities": True}, timeout=60)
    served = np.array(r.json()["probabilities"])
    assert (local.argmax(1) == served.argmax(1)).all()
    assert np.abs(local - served).max() < 1e-2, np.abs(local - served).max()


def test_the_browser_decodes_every_atlas_as_libjpeg_turbo_does(watched):
    """Chromium's JPEG decoder against libjpeg-turbo's (simplejpeg), on every atlas of the
    bundled packages that are imported: equal, or within the format's one grey level
    (docs/format.md); the largest difference and the share of pixels that differ are printed."""
    from jpegweights.codec import container

    page = watched().page
    page.wait_for_selector("#models-table tbody tr")
    report = []
    for name in BUNDLED:
        path = STORE / name / "model.jpw"
        if not path.is_file():
            continue
        stored, manifest = container.read(path.read_bytes())
        for tensor, entry in manifest["tensors"].items():
            for atlas in entry.get("atlases", []):
                jpeg = stored[atlas["key"]].numpy().tobytes()
                want = simplejpeg.decode_jpeg(jpeg, colorspace="GRAY")[..., 0].astype(int)
                got = base64.b64decode(
                    page.evaluate(ATLAS_PIXELS, [base64.b64encode(jpeg).decode(), atlas["width"], atlas["height"]])
                )
                diff = np.abs(np.frombuffer(got, np.uint8).reshape(want.shape).astype(int) - want)
                report.append((f"{name} {atlas['key']}", int(diff.max()), float((diff > 0).mean())))
    print(f"{len(report)} atlases; the largest difference in levels and the share of pixels that differ:")
    print(f"  largest {max(r[1] for r in report)}, share {max(r[2] for r in report):.2%} at most")
    assert len(report) >= 2 and all(largest <= 1 for _, largest, _ in report), [r for r in report if r[1] > 1]


ATLAS_PIXELS = """async ([b64, w, h]) => {
  const px = await JPW.atlasPixels(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)), w, h);
  let s = "";
  for (let i = 0; i < px.length; i += 32768) s += String.fromCharCode(...px.subarray(i, i + 32768));
  return btoa(s);
}"""


def test_a_package_with_a_bad_digest_is_refused_and_the_server_answers(watched, store_server):
    page = watched().page
    body = bytearray(httpx.get(f"{store_server}/weights?model=mnist-mlp", timeout=60).content)
    body[-100] ^= 1  # a byte of the last stored tensor: the SHA-256 no longer matches
    headers = {"content-type": "application/octet-stream"}
    page.route(
        "**/weights?model=mnist-mlp*", lambda route: route.fulfill(status=200, body=bytes(body), headers=headers)
    )
    page.wait_for_selector("#models-table tbody tr")
    message = page.evaluate(
        "async () => { try { await jpwLocal.load('mnist-mlp'); return 'loaded'; } catch (e) { return e.message; } }"
    )
    assert message == "the package's SHA-256 does not match: it is corrupt"
    draw_and_predict(page, local=True)
    page.wait_for_selector("#digit-result .top1")
    assert "cannot run in this browser (the package's SHA-256 does not match" in page.inner_text("#digit-local-status")
    assert page.locator("#digit-result .local-answer").count() == 0


def test_a_drawn_digit_is_answered_here_and_by_the_server_and_offline_here_alone(watched, store_server):
    w = watched(allowed_errors="Failed to load resource|ERR_INTERNET_DISCONNECTED")
    page = w.page
    page.wait_for_selector("#models-table tbody tr")
    draw_and_predict(page, local=True)
    page.wait_for_selector("#digit-result .local-answer")
    status = page.inner_text("#digit-local-status")
    assert "fetched once, SHA-256 checked" in status and "No request per prediction" in status
    server_top = page.inner_text("#digit-result .top1")
    assert page.inner_text("#digit-result .local-answer strong") == server_top
    weights = [u for u in w.requests if "/weights?" in u]
    assert len(weights) == 1
    page.context.set_offline(True)
    page.click("#digit-predict")
    page.wait_for_selector("#digit-result .message")
    assert page.inner_text("#digit-result .local-answer strong") == server_top  # answered here, offline
    page.context.set_offline(False)
    assert len([u for u in w.requests if "/weights?" in u]) == 1  # no request per prediction


def draw_and_predict(page, local: bool) -> None:
    page.wait_for_function("document.getElementById('digit-model').value === 'mnist-mlp'")  # the models are listed
    if local:
        page.check("#digit-local")
    draw(page, [[(140, 40), (140, 240)]])  # a "1", on the canvas scrolled into view
    page.click("#digit-predict")
