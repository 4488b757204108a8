"""The page in a real browser: Playwright drives Debian's Chromium with a fake camera against a real server.

It opens the page with the token in the URL fragment, starts a camera session, sees commentary arrive,
has an over-long question rejected while the session goes on, asks a question, sees the answer, sees the
caption cleared by a silent second, and saves a screenshot. `.ci/run` installs chromium (apt) and
playwright (pip); Playwright's own browser download is never used.
"""
import itertools
import math

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
TOKEN = "browser-token-0123456789"
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


def coin_flip_params(params, eos_id, p_stop=0.5, big=1000.0):
    """The random params changed so that every token is <|im_end|> with probability ~p_stop and otherwise
    uniform over the rest, whatever the context: so about half the seconds are silent, at random.

    Every token embedding gets `big` in dimension 0, which then dominates the residual stream and its final
    RMSNorm (n_0 ~ sqrt(D), the rest ~0). The embeddings are tied, so each logit is ~sqrt(D) * E[v, 0]: the
    same for every token but <|im_end|>, whose E[eos, 0] is higher by the margin that gives it p_stop.
    """
    emb = params["text"]["embed_tokens"]["embedding"]  # [V, D]
    v, d = emb.shape
    margin = math.log(p_stop / (1 - p_stop) * (v - 1)) / math.sqrt(d)
    emb = emb.at[:, 0].set(big).at[eos_id, 0].add(margin)
    return {**params, "text": {**params["text"], "embed_tokens": {"embedding": emb}}}


@pytest.fixture(scope="module")
def server():
    params = coin_flip_params(random_params(CFG), CFG.eos_token_id)
    tok = ChatTokenizer.from_tokenizer(word_level_tokenizer(pseudo_words(956), CFG))
    # No repetition penalty: it would scale the (huge, equal) logits of tokens already seen.
    st = Streamer(CFG, params, tok, SCFG, sampling=SamplingConfig(temperature=1.0, repetition_penalty=1.0),
                  batch=SERVER.max_sessions)
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
            # The box holds at most the server's limit; a longer question sent anyway is rejected, not fatal.
            assert page.eval_on_selector("#question", "el => el.maxLength") == SERVER.max_question_chars
            page.eval_on_selector("#question", "(el, n) => { el.value = 'why '.repeat(n); }",
                                  SERVER.max_question_chars)
            page.click("#ask-button")
            page.wait_for_selector("#answers li.rejected", timeout=60_000)
            n = page.eval_on_selector_all("#transcript li", "els => els.length")
            page.wait_for_function(f"document.querySelectorAll('#transcript li').length > {n}", timeout=60_000)
            assert page.text_content("#status") == "live" and page.is_hidden("#error")
            page.fill("#question", "what is happening")
            page.click("#ask-button")
            page.wait_for_selector("#answers li .a", timeout=60_000)
            assert "what is happening" in page.text_content("#answers")
            n = page.eval_on_selector_all("#transcript li", "els => els.length")
            page.wait_for_function(f"document.querySelectorAll('#transcript li').length > {n}", timeout=60_000)
            # The caption is the latest second's commentary: a silent second right after a spoken one clears it.
            seen = page.wait_for_function("""() => {
                const c = [...document.querySelectorAll('#transcript li .c')].map(e => e.textContent);
                const k = c.length;
                if (k < 2 || c[k - 1] !== '\u2026' || c[k - 2] === '\u2026') return null;
                return {caption: document.querySelector('#caption').textContent};
            }""", timeout=120_000).json_value()
            assert seen == {"caption": ""}
            page.wait_for_function("""() => {
                const c = [...document.querySelectorAll('#transcript li .c')].map(e => e.textContent);
                return c.length > 10 && c[c.length - 1] !== '\u2026' &&
                       document.querySelector('#caption').textContent === c[c.length - 1];
            }""", timeout=120_000)
            # Numbers from 10 on stay inside the scrolling list's box instead of being clipped at its edge.
            assert page.eval_on_selector("#transcript li:nth-child(10)",
                                         "el => getComputedStyle(el).listStylePosition") == "inside"
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
