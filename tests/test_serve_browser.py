"""The page in a real browser: Playwright drives Debian's Chromium with a fake camera against a real server.

It opens the page with the token in the URL fragment, starts a camera session, sees commentary arrive,
asks a question, sees the answer, and saves a screenshot. `.ci/run` installs chromium (apt) and
playwright (pip); Playwright's own browser download is never used.
"""
import itertools

import pytest
from playwright.sync_api import sync_playwright

from svlm_jax import ModelConfig
from svlm_jax.cache import StreamConfig
from svlm_jax.serve.client import get
from svlm_jax.serve.config import ServerConfig
from svlm_jax.serve.runner import ThreadedServer
from svlm_jax.stream import SamplingConfig, Streamer
from svlm_jax.tokenizer import ChatTokenizer, word_level_tokenizer
from tests.model_fixtures import random_params

CFG = ModelConfig.tiny()
TOKEN = "browser-token-123"
# The same shapes as tests/test_serve.py, so the step compiled there is reused in this process.
SERVER = ServerConfig(token=TOKEN, max_sessions=3, fps=2, frame_hw=(56, 56), batch_wait_s=0.3)
SCFG = StreamConfig(vision_window=2, text_sink=8, text_window=8, max_new_tokens=4,
                    vision_tokens=SERVER.vision_tokens, question_tokens=16, answer_tokens=6)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


def pseudo_words(n):
    """n made-up words, so every ordinary id of the tiny vocabulary decodes to a visible word."""
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    return [a + b for a, b in itertools.islice(itertools.product(syllables, syllables), n)]


@pytest.fixture(scope="module")
def server():
    params = random_params(CFG)
    tok = ChatTokenizer.from_tokenizer(word_level_tokenizer(pseudo_words(956), CFG))
    st = Streamer(CFG, params, tok, SCFG, sampling=SamplingConfig(temperature=1.0), batch=SERVER.max_sessions)
    with ThreadedServer(SERVER, st) as srv:
        yield srv


def test_page_commentates_the_camera_and_answers(server, tmp_path):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{server.url}/#token={TOKEN}")
            assert "token" not in page.url  # taken once, then removed from the address bar
            page.click("#start")
            page.wait_for_function("document.querySelectorAll('#transcript li').length >= 2", timeout=120_000)
            assert page.text_content("#status") == "live"
            page.fill("#question", "what is happening")
            page.click("#ask-button")
            page.wait_for_selector("#answers li .a", timeout=60_000)
            assert "what is happening" in page.text_content("#answers")
            n = page.eval_on_selector_all("#transcript li", "els => els.length")
            page.wait_for_function(f"document.querySelectorAll('#transcript li').length > {n}", timeout=60_000)
            assert page.text_content("#caption").strip()  # the latest non-silent commentary
            assert page.text_content("#lag").endswith(" s") and page.text_content("#step").endswith(" ms")
            page.screenshot(path=str(tmp_path / "serve_page.png"))
            sid = page.text_content("#session")
            with page.expect_download() as dl:
                page.click("#dl-vtt")
            assert open(dl.value.path()).read().startswith("WEBVTT")
            page.click("#stop")
            page.wait_for_function("document.querySelector('#status').textContent.startsWith('ended')",
                                   timeout=60_000)
            assert not errors, errors
        finally:
            browser.close()
    status, body = get(f"{server.url}/api/sessions/{sid}/transcript.jsonl", TOKEN)
    assert status == 200 and b'"type": "answer"' in body
