"""The streaming engine on a tiny random model: parity with `forward`, the retention policy against the slow
reference, constant size, no recompiles, batch independence, baseline modes and bad configs."""
import json
import math

import jax
import numpy as np
import pytest

from svlm_jax import ModelConfig, forward
from svlm_jax.cache import CacheFull, StreamConfig, cache_bytes
from svlm_jax.prompt import DEFAULT_QUERY, SILENCE, build_prefix, build_round
from svlm_jax.stream import SamplingConfig, Streamer, sample_token, stop_ids_for, synthetic_seconds
from svlm_jax.tokenizer import ChatTokenizer, word_level_tokenizer
from tests.model_fixtures import noisy_params
from tests.stream_reference import History, OriginalKV, Reference

CFG = ModelConfig.tiny()
WORDS = ["red", "ball", "enters", "bounces", "goal", "what", "a", "shot"]
GREEDY = SamplingConfig(greedy=True)


@pytest.fixture(scope="module")
def params():
    return noisy_params(CFG)


@pytest.fixture(scope="module")
def tok():
    return ChatTokenizer.from_tokenizer(word_level_tokenizer(WORDS, CFG))


def small(**kw):
    base = dict(vision_window=4, text_sink=10, text_window=12, max_new_tokens=6, vision_tokens=4, round_tokens=32,
                prefix_tokens=24, query_tokens=8)
    base.update(kw)
    return StreamConfig(**base)


# ------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("fps", [2, 8])
def test_streamed_logits_match_forward(params, tok, fps):
    """Before any eviction, every logit the stream computes equals forward() on the whole sequence."""
    n_vis = 4 * math.ceil(fps / 2)
    scfg = small(vision_tokens=n_vis)
    prev = "red ball bounces red ball enters"
    st = Streamer(CFG, params, tok, scfg, sampling=GREEDY, previous_text=prev, keep_logits=True)
    pre = build_prefix(tok, tok.encode(prev))
    ids, secs, checks = list(pre.ids), list(synthetic_seconds(CFG, (4, 4), fps=fps, seconds=3, seed=1)), []
    for s, sec in enumerate(secs):
        if s:
            ids += [tok.im_end] + tok.encode("\n")
        ids += build_round(tok, sec.t0, sec.t1, n_vis, query=DEFAULT_QUERY if s == 0 else None).prompt
        c = st.step([sec])[0]
        k = min(c.n_tokens + 1, scfg.max_new_tokens)  # the logits that chose each content token and the stop
        checks.append((len(ids) - 1, st.last_logits[0, :k]))
        ids += list(c.tokens)
    ref = np.asarray(forward(CFG, params, np.asarray([ids]),
                             pixel_values_videos=np.concatenate([s.pixel_values for s in secs]),
                             video_grid_thw=np.concatenate([s.grid_thw for s in secs]),
                             second_per_grid_ts=[secs[0].second_per_grid_ts] * len(secs), time_mode="float"))
    diff = max(float(np.max(np.abs(ours - ref[0, at:at + len(ours)]))) for at, ours in checks)
    print(f"fps {fps}: streamed vs forward logits, max |diff| = {diff:.2e} over {sum(len(o) for _, o in checks)} rows")
    assert diff <= 1e-4


@pytest.mark.parametrize("window,text_round", [(3, None), (2, 4)])
def test_capped_turns_are_cached_after_the_eviction_as_the_original(params, tok, window, text_round):
    """A turn cut at max_new_tokens leaves its last token without K/V, as the original's `generate` does (no
    step runs on the token it samples last): the next second feeds it with <|im_end|> and the new round, after
    that second's eviction. While vision and text are evicted, the logits of every step equal those of the
    original's K/V cache (`OriginalKV`: each token's K/V computed once, in the context it was fed in)."""
    scfg = small(vision_window=window, text_round=text_round, text_sink=6, text_window=8, max_new_tokens=5)
    prev = "red ball bounces red ball enters goal what a shot"
    st = Streamer(CFG, params, tok, scfg, sampling=GREEDY, previous_text=prev, query=DEFAULT_QUERY, keep_logits=True)
    pre = build_prefix(tok, tok.encode(prev))
    hist = History(head=pre.ids[:pre.prev_start], previous=tok.encode(prev), tail=pre.ids[pre.prev_end:],
                   im_end=tok.im_end, newline=tok.encode("\n")[0], silence=tok.encode(SILENCE), im_start=tok.im_start,
                   vision_start=tok.vision_start, vision_end=tok.vision_end)
    ref = OriginalKV(CFG, params, Reference(CFG, hist, vision_window=window, text_round=scfg.turns,
                                            text_sink=scfg.text_sink, text_window=scfg.text_window))
    words = [tok.encode(" " + w)[0] for w in WORDS]
    rng = np.random.default_rng(5)
    diffs, capped = [], 0
    for t, sec in enumerate(synthetic_seconds(CFG, (4, 4), seconds=8, seed=4)):
        if t % 3 != 2:  # mostly capped turns; every third one ends with " ..." or <|endoftext|>
            forced = [int(x) for x in rng.choice(words, scfg.max_new_tokens)]
        else:
            forced = [int(x) for x in rng.choice(words, 2)] + (tok.encode(SILENCE) if t % 2 else [tok.endoftext])
        c = st.step([sec], force=[forced])[0]
        content = [x for x in forced if x != tok.endoftext]
        assert list(c.tokens) == content
        rnd = build_round(tok, sec.t0, sec.t1, 4, query=DEFAULT_QUERY if t == 0 else None)
        q0 = rnd.vision_start + 4 + 1
        hist.rounds.append((rnd.prompt, sec.grid_thw[0].tolist(), sec.second_per_grid_ts,
                            (q0, q0 + len(tok.encode(DEFAULT_QUERY))) if t == 0 else (0, 0)))
        hist.contents.append(content)
        hist.stops.append(tok.endoftext if len(forced) > len(content) else
                          None if len(content) == scfg.max_new_tokens else tok.im_end)
        capped += hist.stops[-1] is None
        expected = ref.step(sec.pixel_values, sec.grid_thw)  # [n_sampled, V]
        ours = st.last_logits[0, :len(expected)]
        assert len(expected) == len(content) + (hist.stops[-1] is not None)
        diffs.append(float(np.max(np.abs(ours - expected))))
        ids, _ = ref.ref.cached("contiguous")
        assert st.hosts[0].retained()[0].tolist() == ids, f"second {t}: the cached tokens differ"
    print(f"window {window}, text_round {text_round}: {capped} capped turns; max |logit diff| per second "
          f"{np.round(diffs, 7).tolist()}")
    assert capped >= 6 and max(diffs) <= 3e-5


# ------------------------------------------------------------------------------------------ policy
def _forced_content(rng, tok, max_new):
    """Random commentary: 0..max_new word tokens, often ending in the silence placeholder, sometimes ended by
    <|endoftext|> (a stop id the original keeps in the turn) or cut at max_new (no stop at all)."""
    words = [tok.encode(" " + w)[0] for w in WORDS]
    silence = tok.encode(SILENCE)
    n = int(rng.integers(0, max_new + 1))
    content = [int(x) for x in rng.choice(words, n)]
    if n >= len(silence) and rng.random() < 0.6:
        content[n - len(silence):] = silence
    if n < max_new and rng.random() < 0.2:
        content.append(tok.endoftext)
    return content


def _device_retained(cache, b=0):
    order = np.asarray(cache.order)[b]
    slots = np.flatnonzero(order >= 0)
    slots = slots[np.argsort(order[slots])]
    assert np.array_equal(order[slots], np.arange(slots.size)), "device order is not a permutation of 0..N-1"
    return np.asarray(cache.tokens)[b][slots].tolist(), np.asarray(cache.pos)[b][slots]


LONG_PREVIOUS = " ".join(WORDS * 4)  # 32 tokens: over text_sink + text_window, so the first second holds more


@pytest.mark.parametrize("pos_mode,keep_query,fps,window,text_round,older_text,prev,n_sec", [
    ("contiguous", False, 2, 4, None, "original", LONG_PREVIOUS, 200),
    ("native", True, 8, 4, None, "original", LONG_PREVIOUS, 80),
    ("contiguous", True, 2, 4, 2, "original", "red ball what a shot", 60),
    ("native", False, 2, 2, 5, "original", LONG_PREVIOUS, 60),
    ("contiguous", False, 2, 1, 1, "original", "red ball what a shot", 40),
    ("contiguous", True, 2, 4, None, "svlm", LONG_PREVIOUS, 60),
    ("native", False, 2, 1, None, "svlm", "red ball what a shot", 30)])
def test_policy_matches_reference(params, tok, pos_mode, keep_query, fps, window, text_round, older_text, prev,
                                  n_sec):
    """At every second the retained tokens and positions (host tables and device cache) equal the reference:
    sink fill, first turn moved, older-text overflow and truncation, text_round apart from the vision window,
    turns cut at the cap or ended by <|endoftext|>."""
    n_vis = 4 * math.ceil(fps / 2)
    scfg = small(vision_window=window, vision_tokens=n_vis, keep_query=keep_query, pos_mode=pos_mode,
                 text_round=text_round, older_text=older_text)
    st = Streamer(CFG, params, tok, scfg, sampling=GREEDY, previous_text=prev, query=DEFAULT_QUERY)
    pre = build_prefix(tok, tok.encode(prev))
    hist = History(head=pre.ids[:pre.prev_start], previous=tok.encode(prev), tail=pre.ids[pre.prev_end:],
                   im_end=tok.im_end, newline=tok.encode("\n")[0], silence=tok.encode(SILENCE), im_start=tok.im_start,
                   vision_start=tok.vision_start, vision_end=tok.vision_end)
    ref = Reference(CFG, hist, vision_window=window, text_round=scfg.turns, text_sink=scfg.text_sink,
                    text_window=scfg.text_window, keep_query=keep_query, older_text=older_text)
    rng = np.random.default_rng(7)
    lengths, held = [], []
    for t, sec in enumerate(synthetic_seconds(CFG, (4, 4), fps=fps, seconds=n_sec, seed=2)):
        forced = _forced_content(rng, tok, scfg.max_new_tokens)
        c = st.step([sec], force=[forced])[0]
        content = [x for x in forced if x != tok.endoftext]
        assert list(c.tokens) == content
        rnd = build_round(tok, sec.t0, sec.t1, n_vis, query=DEFAULT_QUERY if t == 0 else None)
        q0 = rnd.vision_start + n_vis + 1
        span = (q0, q0 + len(tok.encode(DEFAULT_QUERY))) if t == 0 else (0, 0)
        hist.rounds.append((rnd.prompt, sec.grid_thw[0].tolist(), sec.second_per_grid_ts, span))
        hist.contents.append(content)
        hist.stops.append(tok.endoftext if len(forced) > len(content) else
                          None if len(content) == scfg.max_new_tokens else tok.im_end)
        ref.advance()
        ids, pos = ref.cached(pos_mode)
        host_ids, host_pos, _ = st.hosts[0].retained()
        assert host_ids.tolist() == ids, f"second {t}: host tokens differ from the reference"
        np.testing.assert_array_equal(host_pos, pos, err_msg=f"second {t}: host positions")
        dev_ids, dev_pos = _device_retained(st.cache)
        assert dev_ids == ids, f"second {t}: device tokens differ from the reference"
        np.testing.assert_array_equal(dev_pos, pos.astype(np.float32), err_msg=f"second {t}: device positions")
        lengths.append(ref.older_length())
        held.append(len(ref.older))
    # The run covers the second the sink fills and the second older text overflows its window; under the
    # original's rule a long previous text is whole in second 0 and cut at the start of second 1.
    assert lengths[-1] > scfg.text_sink + scfg.text_window and max(held) <= max(len(hist.previous),
                                                                                 scfg.text_sink + scfg.older_tail)
    if len(hist.previous) < scfg.text_sink:
        assert any(a < scfg.text_sink <= b for a, b in zip(lengths, lengths[1:]))
    if prev == LONG_PREVIOUS and older_text == "original":
        assert held[0] == len(hist.previous) > scfg.text_sink + scfg.older_tail == held[1]
    assert {None, tok.im_end, tok.endoftext} <= set(hist.stops)  # cap, <|im_end|> and <|endoftext|> turns
    if pos_mode == "contiguous":
        assert pos.min() == 0 and pos.max() < 400  # bounded however long the stream runs


# ------------------------------------------------------------------------------------------ size, compiles
@pytest.mark.slow
def test_cache_size_and_compiles_flat_over_2000_seconds(params, tok):
    scfg = small(vision_window=3, text_sink=6, text_window=8, max_new_tokens=3, vision_tokens=1)
    params = jax.device_put(params, jax.devices()[0])  # committed, as svlm_jax.load returns them
    st = Streamer(CFG, params, tok, scfg, sampling=SamplingConfig(temperature=1.0, top_k=50, top_p=0.9), seed=3,
                  previous_text="red ball")
    compiles = []

    def listen(name, *_, **__):
        if name == "/jax/core/compile/backend_compile_duration":
            compiles.append(name)

    sizes = {}
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for t, sec in enumerate(synthetic_seconds(CFG, (2, 2), seconds=2000, seed=4)):
            st.step([sec])
            if t == 0:
                first = len(compiles)
            if t + 1 in (20, 2000):
                sizes[t + 1] = st.cache_bytes()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    print(f"compiles: {first} in the first second, {len(compiles) - first} after; bytes {sizes}")
    assert first > 0 and len(compiles) == first
    assert sizes[20] == sizes[2000] == cache_bytes(CFG, scfg) + sum(h.nbytes() for h in st.hosts)


# ------------------------------------------------------------------------------------------ batch
def test_batch_of_three_equals_each_alone(params, tok):
    scfg = small()
    queries = [DEFAULT_QUERY, None, "red ball"]
    prevs = [None, "red ball bounces", "what a shot goal"]
    starts = [0.0, 100.0, 7.0]

    grids = [(4, 4), (4, 4), (2, 8)]  # the third stream has another frame size (same token count)

    def gens():
        return [synthetic_seconds(CFG, grids[b], seconds=9, start=starts[b], seed=10 + b) for b in range(3)]

    together = Streamer(CFG, params, tok, scfg, sampling=GREEDY, batch=3, query=queries, previous_text=prevs)
    got = [[] for _ in range(3)]
    for secs in zip(*gens()):
        for b, c in enumerate(together.step(list(secs))):
            got[b].append(c.tokens)
    for b, g in enumerate(gens()):
        alone = Streamer(CFG, params, tok, scfg, sampling=GREEDY, query=queries[b], previous_text=prevs[b])
        assert [c.tokens for c in alone.run(g)] == got[b], f"stream {b} differs alone and in the batch"
    assert len({tuple(g) for g in got}) == 3  # the streams really are different


def test_ended_stream_in_batch_is_skipped(params, tok):
    st = Streamer(CFG, params, tok, small(), sampling=GREEDY, batch=2)
    a, b = synthetic_seconds(CFG, seed=1), synthetic_seconds(CFG, seed=2)
    st.step([next(a), next(b)])
    out = st.step([next(a), None])
    assert out[1] is None and out[0].index == 1 and st.hosts[1].second == 1


# ------------------------------------------------------------------------------------------ modes
def test_modes_agree_before_eviction_and_full_grows(params, tok):
    """streaming, recompute and full give the same greedy tokens while nothing is evicted."""
    secs = list(synthetic_seconds(CFG, (4, 4), seconds=4, seed=5))
    runs = {}
    for mode, window in (("streaming", 4), ("recompute", 4), ("full", 2)):
        st = Streamer(CFG, params, tok, small(vision_window=window), sampling=GREEDY, mode=mode,
                      previous_text="red ball")
        runs[mode] = [c.tokens for c in st.run(secs)]
        if mode == "full":
            assert st.scfg.vision_window == 4  # grew 2 -> 4
    assert runs["streaming"] == runs["recompute"] == runs["full"]


def test_full_mode_stops_at_its_memory_cap(params, tok):
    scfg = small(vision_window=2)
    cap = cache_bytes(CFG, scfg.replace(evict=False, text_sink=0, text_window=0)) + 1
    st = Streamer(CFG, params, tok, scfg, sampling=GREEDY, mode="full", max_cache_bytes=cap)
    secs = synthetic_seconds(CFG, seed=6)
    st.step([next(secs)]), st.step([next(secs)])
    with pytest.raises(CacheFull, match="above the cap"):
        st.step([next(secs)])


def test_sliding_and_recompute_keep_the_streaming_window(params, tok):
    """sliding drops the text sink; recompute keeps the streaming sequence but rebuilds its K/V."""
    scfg, n = small(), 12
    secs = list(synthetic_seconds(CFG, (4, 4), seconds=n, seed=8))
    force = [[tok.encode(" red")[0], tok.encode(" ball")[0]] + tok.encode(SILENCE)]
    seqs = {}
    for mode in ("streaming", "sliding", "recompute"):
        st = Streamer(CFG, params, tok, scfg, sampling=GREEDY, mode=mode)
        for s in secs:
            st.step([s], force=force)
        seqs[mode] = st.hosts[0].retained()[0].tolist()
    assert seqs["recompute"] == seqs["streaming"]
    older = 2 * (n - scfg.vision_window)  # two tokens from every evicted second
    kept = min(older, scfg.text_sink + scfg.older_tail) - min(older, scfg.older_tail)
    assert older > scfg.text_window and len(seqs["sliding"]) == len(seqs["streaming"]) - kept


# ------------------------------------------------------------------------------------------ sampling
def test_sampling_rules():
    logits = jax.numpy.asarray([1.0, 3.0, 2.0, -1.0])
    seen = jax.numpy.asarray([False, True, False, False])
    key = jax.random.key(0)
    assert int(sample_token(logits, seen, key, SamplingConfig(greedy=True, repetition_penalty=1.0))) == 1
    # Penalty 2 turns 3.0 into 1.5, below 2.0.
    assert int(sample_token(logits, seen, key, SamplingConfig(greedy=True, repetition_penalty=2.0))) == 2
    top1 = SamplingConfig(top_k=1, repetition_penalty=1.0)
    nucleus = SamplingConfig(top_p=0.05, repetition_penalty=1.0)
    for i in range(20):
        k = jax.random.key(i)
        assert int(sample_token(logits, seen, k, top1)) == 1
        assert int(sample_token(logits, seen, k, nucleus)) == 1
    draws = [int(sample_token(logits, seen, jax.random.key(i), SamplingConfig(top_k=2))) for i in range(40)]
    assert set(draws) == {1, 2}
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)


def test_sampled_streams_are_seedable(params, tok):
    secs = list(synthetic_seconds(CFG, seconds=3, seed=9))
    run = lambda seed, ids=None: [c.tokens for c in Streamer(CFG, params, tok, small(), seed=seed,  # noqa: E731
                                                              stream_ids=ids).run(secs)]
    assert run(1) == run(1) != run(2)
    # Sampling is per stream: stream 1 of a batch samples what it samples alone with the same id.
    pair = Streamer(CFG, params, tok, small(), seed=1, batch=2, query=[None, DEFAULT_QUERY])
    together = [pair.step([s, s])[1].tokens for s in secs]
    assert together == run(1, [1]) != run(1)


# Qwen2.5-VL-7B-Instruct's generation_config.json: what a converted stock checkpoint carries.
QWEN_STOCK = {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
              "repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1}


@pytest.mark.parametrize("gen", [QWEN_STOCK, {"top_k": None, "top_p": 0.8}, {"temperature": 0.7}, None],
                         ids=["qwen-stock", "top-k-null", "no-filters", "no-file"])
def test_sampling_from_generation_config_matches_transformers(tmp_path, gen):
    transformers = pytest.importorskip("transformers")
    if gen is not None:
        (tmp_path / "generation_config.json").write_text(json.dumps(gen))
        hf = transformers.GenerationConfig.from_pretrained(str(tmp_path))
    else:
        hf = transformers.GenerationConfig()  # what generate falls back to without the file
    ours = SamplingConfig.from_generation_config(str(tmp_path))
    assert ours.top_k == (hf.top_k or 0) and ours.top_p == (1.0 if hf.top_p is None else hf.top_p)
    # The reference passes temperature and repetition penalty to generate(), over the file's.
    assert (ours.temperature, ours.repetition_penalty, ours.greedy) == (0.9, 1.05, False)
    mine = SamplingConfig.from_generation_config(str(tmp_path), top_k=5, temperature=None, greedy=True)
    assert (mine.top_k, mine.temperature, mine.greedy) == (5, 0.9, True)


def test_stop_ids_follow_the_generation_config(tmp_path, tok):
    assert stop_ids_for(tok) == stop_ids_for(tok, str(tmp_path)) == (tok.im_end, tok.endoftext)
    gen = tmp_path / "generation_config.json"
    gen.write_text(json.dumps({"eos_token_id": [tok.endoftext, tok.im_end, 7]}))
    assert stop_ids_for(tok, str(tmp_path)) == (tok.im_end, tok.endoftext, 7)
    gen.write_text(json.dumps({"eos_token_id": 7}))
    assert stop_ids_for(tok, str(gen)) == (tok.im_end, 7)
    gen.write_text("{not json")
    with pytest.raises(ValueError, match="generation_config.json is not valid JSON"):
        stop_ids_for(tok, str(tmp_path))


def test_stop_ids_end_the_turn(params, tok):
    """A token made a stop id ends every turn where greedy decoding would emit it, and is not written."""
    secs = list(synthetic_seconds(CFG, seconds=4, seed=5))
    free = [c.tokens for c in Streamer(CFG, params, tok, small(), sampling=GREEDY).run(secs)]
    first = free[0][0]
    stopped = Streamer(CFG, params, tok, small(), sampling=GREEDY, stop_ids=(tok.im_end, first)).run(secs)
    assert next(stopped).tokens == ()
    with pytest.raises(ValueError, match="below the vocabulary size 1024"):
        Streamer(CFG, params, tok, small(), stop_ids=(tok.im_end, 151643))


# ------------------------------------------------------------------------------------------ bad configs
def test_config_that_cannot_fit_the_prompt(params, tok):
    with pytest.raises(ValueError, match="prefix_tokens is 4"):
        Streamer(CFG, params, tok, small(prefix_tokens=4))
    with pytest.raises(ValueError, match="query_tokens is 2"):
        Streamer(CFG, params, tok, small(query_tokens=2))
    sec = next(synthetic_seconds(CFG, (4, 8)))
    with pytest.raises(ValueError, match="vision_tokens is 4"):
        Streamer(CFG, params, tok, small()).step([sec])
    with pytest.raises(ValueError, match="round_tokens"):
        Streamer(CFG, params, tok, small(round_tokens=8)).step([next(synthetic_seconds(CFG))])
    with pytest.raises(ValueError, match="Invalid StreamConfig: pos_mode"):
        small(pos_mode="rope")
    with pytest.raises(ValueError, match="one per stream"):
        Streamer(CFG, params, tok, small(), batch=2, query=["a", "b", "c"])


def test_bfloat16_stream_runs(params, tok):
    """The GPU path: bf16 compute, params and cache; tokens stay in the vocabulary."""
    cfg = CFG.replace(dtype="bfloat16")
    p16 = jax.tree_util.tree_map(lambda x: x.astype(jax.numpy.bfloat16), params)
    st = Streamer(cfg, p16, tok, small(), sampling=GREEDY)
    out = [c.tokens for c in st.run(synthetic_seconds(cfg, seconds=6, seed=12))]
    assert st.cache.k[0].dtype == jax.numpy.bfloat16 and st.cache.k[0].shape[1] == small().layout.size
    assert all(0 <= t < cfg.text.vocab_size for toks in out for t in toks) and any(out)


def test_vision_tokens_sized_from_the_first_second(params, tok):
    st = Streamer(CFG, params, tok, small(vision_tokens=None), sampling=GREEDY)
    assert st.cache_bytes() == 0
    out = [c.tokens for c in st.run(synthetic_seconds(CFG, (4, 4), seconds=3, seed=13))]
    ref = Streamer(CFG, params, tok, small(), sampling=GREEDY)
    assert st.scfg.vision_tokens == 4 and out == [c.tokens for c in ref.run(synthetic_seconds(CFG, (4, 4), seconds=3,
                                                                                              seed=13))]
