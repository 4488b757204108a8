"""Streaming is token-exact with the original StreamingVLM, on the real Qwen2.5 vocabulary (docs/ORIGINAL.md
§The prompt, §The cache policy).

The expected ids are built here as the original builds them, independently of svlm_jax.prompt and
svlm_jax.cache: the chat-template strings of §The prompt tokenized whole, the turns left in the list as HF's
`generate` leaves them, and `process_past_kv` (§The cache policy) applied to the id list by searching it for the
`<|im_start|>assistant`, `<|im_start|>user` and `<|im_start|>previous text\\n` patterns, as the original's
`get_qwen_range` does.
"""
import jax
import numpy as np
import pytest

from svlm_jax import ModelConfig, init_params
from svlm_jax.cache import StreamConfig
from svlm_jax.prompt import DEFAULT_QUERY
from svlm_jax.stream import SamplingConfig, Streamer, synthetic_seconds

IM_START, IM_END, ENDOFTEXT, NL = 151644, 151645, 151643, 198
USER, ASSISTANT, PREVIOUS_TEXT = 872, 77091, [19702, 1467]
SYSTEM_BLOCK = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"  # SYSTEM_PROMPT_OFFSET = 58 chars
# The original CLI's default previous text, repeated so that it is over 1,024 tokens.
PREVIOUS = ("THis is a video with title 'Golden State Warriors’ BEST PLAYS from the 2024-25 NBA Season'. "
            "This is Highlight of Warriors. Curry is going to score a 3-pointer. ") * 30
PHRASES = [" Curry brings it up the floor ...", " ...", " Green with the screen, Curry pulls up from deep ...",
           "", " and it's good! ...", " ...", " Warriors lead by 5 ..."]


def _qwen_tiny():
    """The tiny test model with the Qwen2.5-VL vocabulary size and special ids."""
    return ModelConfig.tiny(vocab_size=151936).replace(
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        bos_token_id=ENDOFTEXT, eos_token_id=IM_END)


def _encode(tok, text):
    return tok.tokenizer.encode(text, add_special_tokens=False).ids


def _segments(ids, start_pat):
    """(start, im_end index) of every `start_pat ... <|im_end|>` segment, as get_qwen_range finds them."""
    out, i = [], 0
    while i <= len(ids) - len(start_pat):
        if ids[i:i + len(start_pat)] == start_pat:
            j = ids.index(IM_END, i + len(start_pat))
            out.append((i, j))
            i = j + 1
        else:
            i += 1
    return out


def _with_lf(ids, end):
    """The segment's last index: its <|im_end|>, or the "\\n" after it when there is one."""
    return end + 1 if end + 1 < len(ids) and ids[end + 1] == NL else end


def _process_past_kv(ids, i, *, window, sink, sliding):
    """The original's `process_past_kv` (docs/ORIGINAL.md §The cache policy) at the start of second i, for
    text_round == window (the defaults)."""
    if i >= window:
        a, e = _segments(ids, [IM_START, ASSISTANT])[0]
        moved = ids[a + 3:e - 1]  # [im_start+3, im_end-2]: all but the token before <|im_end|>
        p = _segments(ids, [IM_START] + PREVIOUS_TEXT + [NL])[0][1]  # the previous text's <|im_end|>
        ids = ids[:p] + moved + ids[p:a + 3] + ids[e - 1:]
        a, e = _segments(ids, [IM_START, ASSISTANT])[0]
        ids = ids[:a] + ids[_with_lf(ids, e) + 1:]  # the oldest assistant block
        u, e = _segments(ids, [IM_START, USER])[0]
        ids = ids[:u] + ids[_with_lf(ids, e) + 1:]  # the oldest user block, with its clip
    if i > 0:
        start, e = _segments(ids, [IM_START] + PREVIOUS_TEXT + [NL])[0]
        end = _with_lf(ids, e)
        cut0, cut1 = start + sink + 4, end - sliding - 1
        if cut0 <= cut1:
            ids = ids[:cut0] + ids[cut1 + 1:]
    return ids


def _round_text(t, n_vision, query=""):
    return (f"<|im_start|>user\nTime={t:.1f}-{t + 1:.1f}s<|vision_start|>" + "<|video_pad|>" * n_vision
            + f"<|vision_end|>{query}<|im_end|>\n<|im_start|>assistant\n")


def _contents(tok, n, max_new):
    """Per second: (content ids, stop id or None at the cap). Covers a silent turn, an empty one, a turn cut at
    20 tokens, and one ended by <|endoftext|>."""
    out = []
    for i in range(n):
        if i % 9 == 4:
            words = _encode(tok, " and the crowd goes wild as the Warriors run the floor again and again and again, "
                                 "Curry to Thompson, Thompson to Green")
            assert len(words) > max_new
            out.append((words[:max_new], None))  # the cap: no <|im_end|> sampled, the original appends one
        elif i % 9 == 7:
            out.append((_encode(tok, " timeout on the floor ..."), ENDOFTEXT))
        else:
            out.append((_encode(tok, PHRASES[i % len(PHRASES)]), IM_END))
    return out


def test_streamed_ids_equal_the_original_over_40_seconds(qwen_tok):
    """Second-0 prompt, later rounds, the first eviction (second 16), the whole previous text in second 0 and
    its first cut (second 1), later cuts as turns move in, 20-token and <|endoftext|> turns: the retained ids
    equal the original's at every second."""
    assert len(SYSTEM_BLOCK) == 58
    cfg = _qwen_tiny()
    params = init_params(cfg, jax.random.key(0))
    scfg = StreamConfig(vision_tokens=4)  # the original's defaults: window 16, text_round 16, sink/window 512
    n_sec, window, sink, sliding = 40, 16, 512, 512
    st = Streamer(cfg, params, qwen_tok, scfg, sampling=SamplingConfig(greedy=True), previous_text=PREVIOUS)
    contents = _contents(qwen_tok, n_sec, scfg.max_new_tokens)
    ids, held, cut = None, [], []
    for i, sec in enumerate(synthetic_seconds(cfg, (4, 4), seconds=n_sec, seed=3)):
        if i == 0:
            text = (SYSTEM_BLOCK + f"<|im_start|>previous text\n{PREVIOUS}<|im_end|>\n"
                    + _round_text(sec.t0, 4, DEFAULT_QUERY))
            ids = _encode(qwen_tok, text)
        else:
            before = len(ids)
            ids = _process_past_kv(ids, i, window=window, sink=sink, sliding=sliding)
            cut.append(before - len(ids))
            full = SYSTEM_BLOCK + _round_text(sec.t0, 4)
            new = _encode(qwen_tok, "\n" + full[58:])
            ids = ids + (new[1:] if ids[-1] == NL else new)
        content, stop = contents[i]
        force = content + ([ENDOFTEXT] if stop == ENDOFTEXT else [])
        c = st.step([sec], force=[force])[0]
        assert list(c.tokens) == content
        got = st.hosts[0].retained()[0].tolist()
        # A capped turn's last token has no K/V yet: like the original, the next prefill writes it.
        written = content[:-1] if stop is None else content
        assert got == ids + written, f"second {i}: the streamed ids differ from the original's"
        start, e = _segments(ids, [IM_START] + PREVIOUS_TEXT + [NL])[0]
        held.append(e - start - 4)
        # What generate returns: content, the stop id, <|im_end|> appended when the stop was not one.
        ids = ids + content + ([stop] if stop is not None else []) + ([IM_END] if stop != IM_END else [])
    # Second 0 holds the whole previous text (over 1,023 tokens); it is cut at second 1 to 512 + 511; turns
    # move in from second 16 and each later cut keeps it at 1,023.
    assert held[0] > sink + sliding - 1 == held[1] == held[-1] and cut[0] > 0
    assert held[15] == held[16] and cut[15] > cut[14]
    assert np.all(np.asarray(held[1:]) <= sink + sliding - 1)
