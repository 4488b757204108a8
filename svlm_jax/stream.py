"""Live commentary on endless video: compiled per-second steps over the streaming cache, and `Streamer`.

Each second of each stream:
  1. the host (`cache.HostStream`) evicts per the policy, places the new tokens and renumbers positions;
  2. `encode_vision` runs the vision tower on the second's frames (one compile per frame size);
  3. `relayout` copies the K/V of commentary that became older text and installs the new slot metadata;
  4. `prefill` writes the round's tokens (previous turn's tail, user block, assistant header) in chunks
     of a fixed length;
  5. `generate` samples up to `max_new_tokens` inside one `lax.while_loop`, stopping at `<|im_end|>`.
Every step donates the cache and has static shapes, so nothing recompiles after the first second.

`Streamer` drives B streams in lock step and returns one `Comment` per stream per second. Its B streams are
slots: sessions open and close at any second (`open`, `close`) and take questions mid-stream (`ask`: the
question joins the next second's user turn, the turn answers it, then commentates), all on the same
compiled steps. Modes:
  streaming  the StreamingVLM policy (sinks, vision window, text window);
  sliding    the same window without the text sink;
  full       no eviction: the cache grows (doubling) up to `max_cache_bytes`, then `CacheFull`;
  recompute  the streaming policy, but the whole retained window (vision re-encoded) is prefilled
             again every second instead of reusing K/V.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Iterable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from svlm_jax.cache import CacheFull, HostStream, StreamCache, StreamConfig, cache_bytes, init_cache, tree_bytes
from svlm_jax.config import ModelConfig
from svlm_jax.errors import StreamInputError
from svlm_jax.layers import apply_rotary
from svlm_jax.model import Qwen25VL
from svlm_jax.prompt import (DEFAULT_QUERY, DEFAULT_SYSTEM, SILENCE, build_prefix, build_round, encode_previous,
                             question_text, truncate_middle)
from svlm_jax.rope import text_cos_sin
from svlm_jax.text import LayerKV, read_cache
from svlm_jax.tokenizer import ChatTokenizer
from svlm_jax.video import TEMPORAL_PATCH_SIZE, Second
from svlm_jax.vision import vision_metadata

MODES = ("streaming", "sliding", "full", "recompute")
Params = dict[str, Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """How each token is chosen: repetition penalty, then greedy argmax or temperature / top-k / top-p sampling.

    Defaults are the reference's (temperature 0.9, repetition penalty 1.05). top_k=0 and top_p=1 are off.
    The repetition penalty (HF's rule) applies to every token in the retained cache and generated so far.
    """

    temperature: float = 0.9
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.05
    greedy: bool = False

    def __post_init__(self):
        checks = [
            (self.greedy or self.temperature > 0, f"temperature must be > 0 (or use greedy), got {self.temperature}"),
            (self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"Invalid SamplingConfig: {msg}.")

    @classmethod
    def from_generation_config(cls, path, **overrides) -> "SamplingConfig":
        """The reference's sampling for the checkpoint at `path` (a directory or its generation_config.json).

        The reference passes temperature 0.9 and repetition penalty 1.05 to `generate` itself, so those
        win over the file. top_k and top_p come from the file, or are transformers' defaults (50 and 1.0)
        when it lacks them; a null there turns the filter off. `overrides` that are not None win over all.
        """
        g = read_generation_config(path)
        top_k, top_p = g.get("top_k", 50), g.get("top_p", 1.0)
        vals = dict(temperature=0.9, repetition_penalty=1.05, top_k=int(top_k or 0),
                    top_p=1.0 if top_p is None else float(top_p))
        vals.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**vals)


GENERATION_CONFIG = "generation_config.json"


def read_generation_config(path) -> dict[str, Any]:
    """The contents of a checkpoint's generation_config.json (`path`: the file or its directory); {} if absent."""
    file = os.path.join(path, GENERATION_CONFIG) if os.path.isdir(path) else path
    if not os.path.exists(file):
        return {}
    try:
        with open(file) as f:
            g = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON ({e}); fix or delete it.") from None
    if not isinstance(g, dict):
        raise ValueError(f"{file} holds a {type(g).__name__}, not a JSON object; fix or delete it.")
    return g


def stop_ids_for(tokenizer: ChatTokenizer, path=None) -> tuple[int, ...]:
    """Token ids that end a turn: <|im_end|> first, then the eos ids of generation_config.json at `path`
    (<|endoftext|> when there is none), as HF's `generate` stops on the checkpoint's eos list."""
    eos = read_generation_config(path).get("eos_token_id") if path is not None else None
    eos = [tokenizer.endoftext] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    return tuple(dict.fromkeys([tokenizer.im_end, *(int(i) for i in eos)]))


def sample_token(logits, seen, key, sampling: SamplingConfig):
    """One token from logits [V] (float32); seen [V] bool marks tokens the repetition penalty applies to."""
    if sampling.repetition_penalty != 1.0:
        p = sampling.repetition_penalty
        logits = jnp.where(seen, jnp.where(logits > 0, logits / p, logits * p), logits)
    if sampling.greedy:
        return jnp.argmax(logits).astype(jnp.int32)
    logits = logits / sampling.temperature
    neg = jnp.finfo(jnp.float32).min
    if sampling.top_k > 0:
        kth = jax.lax.top_k(logits, min(sampling.top_k, logits.shape[-1]))[0][-1]
        logits = jnp.where(logits < kth, neg, logits)
    if sampling.top_p < 1.0:
        desc = jnp.sort(logits)[::-1]  # [V]
        probs = jax.nn.softmax(desc)
        keep = (jnp.cumsum(probs) - probs) < sampling.top_p  # the nucleus, the crossing token included
        logits = jnp.where(logits < jnp.min(jnp.where(keep, desc, jnp.inf)), neg, logits)
    return jax.random.categorical(key, logits).astype(jnp.int32)


# ------------------------------------------------------------------------------------------ compiled steps
def _apply(cfg: ModelConfig, params: Params, fn):
    return nn.apply(fn, Qwen25VL(cfg))({"params": params})


def _tables(pos, cfg: ModelConfig):
    """Rotary tables for positions [B, N, 3] -> cos, sin [B, N, hd] in the compute dtype."""
    return text_cos_sin(jnp.moveaxis(pos, -1, 0), cfg.text, cfg.compute_dtype)


@functools.partial(jax.jit, static_argnames=("cfg", "items", "cap"))
def encode_vision(cfg: ModelConfig, params: Params, pixel_values, meta, *, items: int, cap: int):
    """Vision tower on `items` seconds of one grid: pixel_values [items*N, patch_dim] -> [items, cap, D].

    Each second's N/4 merged tokens are padded with zeros to `cap`. One compile per (grid, items).
    """
    feats = _apply(cfg, params, lambda m: m.encode_vision(pixel_values, meta))  # [items*N/4, D]
    feats = feats.reshape(items, -1, feats.shape[-1])
    return jnp.pad(feats, ((0, 0), (0, cap - feats.shape[1]), (0, 0))).astype(cfg.compute_dtype)


@functools.partial(jax.jit, donate_argnames=("buf",))
def _place(buf, feats, b):
    """buf [B, F, D] with row b (an int32 scalar) set to the features [items, cap, D] (items*cap = F)."""
    return buf.at[b].set(feats.reshape(buf.shape[1:]).astype(buf.dtype))


@functools.partial(jax.jit, donate_argnames=("cache",))
def relayout(cache: StreamCache, src, dst, order, pos, tokens) -> StreamCache:
    """Copy K/V from slots src to dst ([B, M]; dst >= S is skipped) and install new metadata tables.

    order/tokens: [B, S] int32, pos: [B, S, 3] float32, as computed by the host for this second.
    """
    rows = jnp.arange(src.shape[0])[:, None]
    move = lambda a: a.at[rows, dst].set(a[rows, src], mode="drop")  # noqa: E731  [B, S, ...]
    return StreamCache(k=jax.tree.map(move, cache.k), v=jax.tree.map(move, cache.v), order=order, pos=pos,
                       tokens=tokens)


def _visible(order, q_order):
    """Causal slot mask: keys with order in [0, q_order]. order [B, S], q_order [B, T] -> [B, T, S] bool."""
    return (order[:, None, :] >= 0) & (order[:, None, :] <= q_order[:, :, None])


@functools.partial(jax.jit, static_argnames=("cfg", "all_logits"), donate_argnames=("cache",))
def prefill(cfg: ModelConfig, params: Params, cache: StreamCache, tokens, slots, vision, feats,
            all_logits: bool = False):
    """Write T tokens per stream into the cache and return the logits of the last one.

    tokens/slots/vision: [B, T] int32 (slot >= S = padding, written nowhere; vision = index into feats
    [B, F, D] for vision tokens, -1 for text). Orders and positions of the tokens are read from the cache
    tables at their slots. Returns (cache, logits [B, V]) or, with all_logits, logits [B, T, V].
    """
    b, s = cache.order.shape
    rows = jnp.arange(b)[:, None]
    safe = jnp.minimum(slots, s - 1)
    q_order = jnp.where(slots < s, cache.order[rows, safe], -1)  # [B, T]
    cos_k, sin_k = _tables(cache.pos, cfg)  # [B, S, hd]
    cos_q, sin_q = _tables(cache.pos[rows, safe], cfg)  # [B, T, hd]
    mask = _visible(cache.order, q_order)  # [B, T, S]

    def fn(m: Qwen25VL):
        x = m.embed(tokens)  # [B, T, D]
        v = feats[rows, jnp.maximum(vision, 0)]
        x = jnp.where((vision >= 0)[..., None], v.astype(x.dtype), x)
        kv = [LayerKV(k, vv, cos_k, sin_k, slots) for k, vv in zip(cache.k, cache.v)]
        h, new = m.decode_with_tables(x, cos_q, sin_q, mask, kv)
        return m.logits(h if all_logits else h[:, -1:]), new

    logits, new = _apply(cfg, params, fn)
    cache = cache.replace(k=tuple(k for k, _ in new), v=tuple(v for _, v in new))
    return cache, (logits if all_logits else logits[:, 0])


@functools.partial(jax.jit, static_argnames=("cfg", "sampling", "max_new", "stop_ids", "keep_logits", "max_answer",
                                             "newline", "rotate_once"), donate_argnames=("cache",))
def generate(cfg: ModelConfig, params: Params, cache: StreamCache, logits0, base_slot, base_order, base_pos,
             active, forced, forced_len, keys, seconds, answer_len=None, *, sampling: SamplingConfig, max_new: int,
             stop_ids: tuple[int, ...], keep_logits: bool = False, max_answer: int = 0, newline: int = -1,
             rotate_once: bool = True):
    """One assistant turn per stream, in one compiled loop: an optional answer, then the commentary.

    logits0 [B, V]: logits after the prefill. Token i of row b goes to slot base_slot[b] + i with logical
    index base_order[b] + i and text position base_pos[b] + i. Each row stops at a stop id or when its
    commentary has max_new tokens. The token that ends a turn, a stop id or the last token of a capped
    commentary, is sampled but not written: as in HF's `generate`, no step runs on the last token, so its
    K/V are computed with the next second's tokens, after that second's eviction (`HostStream` holds it).
    answer_len [B] (used when max_answer > 0): a row with answer_len >= 0 first writes an answer of at most
    answer_len tokens ended by `newline` (sampled, or forced at the limit), then its commentary; -1 =
    commentary only. forced [B, max_new] / forced_len [B] teacher-force a row's commentary (forced_len
    tokens, then a stop) where forced_len >= 0. keys [B] and seconds [B] seed the sampler. With L = max_new (+ max_answer + 1 when max_answer > 0), returns
    (cache, tokens [B, L] (the written ones, then the token that ended the turn; -1 after it), n_written [B],
    answer_end [B] (index of the first commentary token: 0 without a question, n_written if the turn ended
    inside the answer), logits [B, L, V] (row i: the logits that chose token i) or None).
    rotate_once: rotate every cached key once at the start of the turn and only the new key at each step
    (default); False rotates all S keys at every step, as attention over an un-rotated cache does by itself.
    Both compute the same logits.
    """
    b, s = cache.order.shape
    vocab = logits0.shape[-1]
    total = max_new + (max_answer + 1 if max_answer else 0)
    rows = jnp.arange(b)
    stops = jnp.asarray(stop_ids, jnp.int32)
    keys = jax.vmap(jax.random.fold_in)(keys, seconds)
    penalize = sampling.repetition_penalty != 1.0
    answer_len = jnp.full(b, -1, jnp.int32) if (answer_len is None or not max_answer) else answer_len

    def pick(i, logits, seen, ans, cstart):
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, i)
        tok = jax.vmap(functools.partial(sample_token, sampling=sampling))(logits, seen, step_keys)
        j = jnp.clip(i - cstart, 0, max_new - 1)  # index inside the commentary
        f = jnp.take_along_axis(forced, j[:, None], axis=1)[:, 0]
        com = jnp.where(forced_len < 0, tok, jnp.where(i - cstart < forced_len, f, stops[0]))
        return jnp.where(ans, jnp.where(i >= answer_len, newline, tok), com)

    def switch(i, tok, ans, cstart, on):
        done = on & ans & (tok == newline)  # the answer's "\n": the commentary starts after it
        return ans & ~done, jnp.where(done, i + 1, cstart)

    def ends(i, tok, ans, cstart):
        """Token i ends the turn: a stop id, or the last token the commentary has room for."""
        return jnp.isin(tok, stops) | (~ans & (i - cstart >= max_new - 1)) | (i + 1 >= total)

    def mark(seen, tok, on):
        if not penalize:
            return seen
        return seen.at[rows, jnp.where(on, tok, vocab)].set(True, mode="drop")

    seen = jnp.zeros((b, vocab if penalize else 1), bool)
    if penalize:
        seen = seen.at[rows[:, None], jnp.where(cache.tokens >= 0, cache.tokens, vocab)].set(True, mode="drop")
    ans = answer_len >= 0
    cstart = jnp.where(ans, total, 0)
    tok0 = pick(0, logits0, seen, ans, cstart)
    ans, cstart = switch(0, tok0, ans, cstart, active)
    out = jnp.full((b, total), -1, jnp.int32).at[:, 0].set(tok0)
    live = active & ~ends(0, tok0, ans, cstart)
    seen = mark(seen, tok0, active)
    buf = jnp.zeros((b, total, vocab) if keep_logits else (b, 0, vocab), jnp.float32)
    if keep_logits:
        buf = buf.at[:, 0].set(logits0)
    cos, sin = _tables(cache.pos, cfg)  # [B, S, hd]
    # Every cached key rotated once for the whole turn ([B, S, KV, hd] per layer); each step then rotates only
    # the key it writes, instead of all S keys per token.
    if rotate_once:
        krot = tuple(apply_rotary(read_cache(k, cfg.compute_dtype), cos[:, :, None], sin[:, :, None])
                     for k in cache.k)
    else:
        krot = (cos, sin)  # the tables, updated at each written slot; keys are rotated inside attention
    state = (jnp.int32(0), cache, krot, tok0, live, out, jnp.zeros(b, jnp.int32), seen, buf, ans, cstart)

    def cond(st):
        return (st[0] < total) & jnp.any(st[4])

    def body(st):
        i, c, krot, tok, live, out, n, seen, buf, ans, cstart = st
        slot = jnp.where(live, base_slot + i, s)  # [B]; s = nowhere
        q_order = base_order + i
        q_pos = jnp.broadcast_to((base_pos + i.astype(jnp.float32))[:, None, None], (b, 1, 3))
        cos_q, sin_q = _tables(q_pos, cfg)  # [B, 1, hd]
        order = c.order.at[rows, slot].set(q_order, mode="drop")
        mask = _visible(order, q_order[:, None])  # [B, 1, S]

        if rotate_once:
            kvs = [LayerKV(k, v, None, None, slot[:, None], kr) for k, v, kr in zip(c.k, c.v, krot)]
        else:
            cos = krot[0].at[rows, slot].set(cos_q[:, 0], mode="drop")
            sin = krot[1].at[rows, slot].set(sin_q[:, 0], mode="drop")
            kvs = [LayerKV(k, v, cos, sin, slot[:, None]) for k, v in zip(c.k, c.v)]

        def fn(m: Qwen25VL):
            h, new = m.decode_with_tables(m.embed(tok[:, None]), cos_q, sin_q, mask, kvs)
            return m.logits(h)[:, 0], new

        logits, new = _apply(cfg, params, fn)  # [B, V]
        krot = tuple(x[2] for x in new) if rotate_once else (cos, sin)
        c = StreamCache(k=tuple(x[0] for x in new), v=tuple(x[1] for x in new), order=order,
                        pos=c.pos.at[rows, slot].set(q_pos[:, 0], mode="drop"),
                        tokens=c.tokens.at[rows, slot].set(tok, mode="drop"))
        n = n + live.astype(jnp.int32)
        can = live  # a written token always has a successor: `ends` kept the last one out
        nxt = pick(i + 1, logits, seen, ans, cstart)
        ans, cstart = switch(i + 1, nxt, ans, cstart, can)
        out = out.at[rows, jnp.where(can, i + 1, total)].set(nxt, mode="drop")
        seen = mark(seen, nxt, can)
        if keep_logits:
            buf = buf.at[:, jnp.minimum(i + 1, total - 1)].set(
                jnp.where(can[:, None], logits, buf[:, jnp.minimum(i + 1, total - 1)]))
        live = can & ~ends(i + 1, nxt, ans, cstart)
        return i + 1, c, krot, jnp.where(can, nxt, tok), live, out, n, seen, buf, ans, cstart

    _, cache, _, _, _, out, n, _, buf, _, cstart = jax.lax.while_loop(cond, body, state)
    out = jnp.where(jnp.arange(total)[None] <= n[:, None], out, -1)
    return cache, out, n, jnp.minimum(cstart, n), (buf if keep_logits else None)


@jax.jit
def _reseed(keys, slot, base, stream_id):
    """keys [B] with keys[slot] = fold_in(base, stream_id): a session's sampler (slot, stream_id: int32 scalars)."""
    return keys.at[slot].set(jax.random.fold_in(base, stream_id))


# ------------------------------------------------------------------------------------------ streamer
@dataclasses.dataclass(frozen=True)
class Comment:
    """One stream's output for one second.

    text: the commentary, " ..." placeholder stripped and whitespace trimmed ("" for a silent second);
    tokens: the generated commentary ids (placeholder included, stop token excluded);
    vision_ms / prefill_ms / decode_ms: wall time of the step's phases (shared by the batch);
    n_tokens: tokens generated (answer and its "\n" included, the stop id not);
    question / answer: the viewer's question put in this second's user turn (`Streamer.ask`) and the answer
    generated for it (after its answer prefix, without the "\n" that ends it, whitespace trimmed); None
    when the second had no question. answer_tokens: the answer's generated ids.
    """

    stream: int
    index: int
    t0: float
    t1: float
    text: str
    tokens: tuple[int, ...]
    vision_ms: float
    prefill_ms: float
    decode_ms: float
    n_tokens: int
    partial: bool = False
    question: str | None = None
    answer: str | None = None
    answer_tokens: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The JSON line of the CLI's --jsonl: t0, t1, text, phase milliseconds and tokens (and the question
        and answer of a second that had one)."""
        d = {"t0": self.t0, "t1": self.t1, "text": self.text, "vision_ms": round(self.vision_ms, 3),
             "prefill_ms": round(self.prefill_ms, 3), "decode_ms": round(self.decode_ms, 3),
             "tokens": self.n_tokens}
        if self.question is not None:
            d.update(question=self.question, answer=self.answer)
        return d


class SlotsFull(RuntimeError):
    """Raised by `Streamer.open` when every slot holds a session."""


@dataclasses.dataclass(frozen=True)
class _Question:
    text: str
    prefix: tuple[int, ...]  # answer-prefix ids
    limit: int  # answer tokens to generate, at most


def _per_stream(value, batch: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != batch:
            raise ValueError(f"{name} has {len(value)} entries for {batch} streams; pass one per stream or a "
                             f"single value.")
        return list(value)
    return [value] * batch


class Streamer:
    """B streams of live commentary over one model, stepped one second at a time.

    cfg, params: the model (`svlm_jax.load`); tokenizer: a `ChatTokenizer` of the checkpoint.
    scfg: cache capacities and policy; sampling: token choice; seed: sampler seed. Stream b samples with
    fold_in(seed, stream_ids[b]) (default stream_ids = 0..B-1), so a stream given the same id samples the
    same tokens alone or in any batch.
    system, query, previous_text: a value for all streams or a list with one per stream (None = none).
    mode: one of MODES (see the module docstring). max_cache_bytes caps the cache of mode "full".
    keep_logits: keep the last step's logits in `last_logits` (for tests). stop_ids: token ids that end a
    turn, the first one written for forced turns (default `stop_ids_for(tokenizer)`: <|im_end|>, <|endoftext|>).
    cache_dtype: K/V storage, overriding `scfg.kv_dtype`. rotate_keys: "once" rotates the cached keys once per
    turn and each new key as it is written (default); "per_token" rotates all of them at every decode step.
    The two give the same logits; "once" reads and writes less per token.
    """

    def __init__(self, cfg: ModelConfig, params: Params, tokenizer: ChatTokenizer,
                 scfg: StreamConfig = StreamConfig(), *, sampling: SamplingConfig = SamplingConfig(),
                 batch: int = 1, seed: int = 0, system: str | Sequence[str] = DEFAULT_SYSTEM,
                 query: str | None | Sequence[str | None] = DEFAULT_QUERY,
                 previous_text: str | None | Sequence[str | None] = None, mode: str = "streaming",
                 max_cache_bytes: int | None = None, cache_dtype=None, keep_logits: bool = False,
                 stream_ids: Sequence[int] | None = None, stop_ids: Sequence[int] | None = None,
                 rotate_keys: str = "once"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        if rotate_keys not in ("once", "per_token"):
            raise ValueError(f"rotate_keys must be 'once' or 'per_token', got {rotate_keys!r}.")
        self.rotate_once = rotate_keys == "once"
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}.")
        tokenizer.check_model(cfg)
        self.cfg, self.params, self.tok, self.sampling = cfg, params, tokenizer, sampling
        self.mode, self.batch, self.keep_logits = mode, batch, keep_logits
        self.max_cache_bytes, self.cache_dtype = max_cache_bytes, cache_dtype
        nl = tokenizer.encode("\n")
        if len(nl) != 1:
            raise ValueError(f"The tokenizer encodes a newline as {len(nl)} tokens; the template needs exactly one.")
        self.silence = tokenizer.encode(SILENCE)
        self.stop_ids = tuple(int(i) for i in (stop_ids or stop_ids_for(tokenizer)))
        if any(not 0 <= i < cfg.text.vocab_size for i in self.stop_ids):
            raise ValueError(f"stop_ids {self.stop_ids} must be token ids below the vocabulary size "
                             f"{cfg.text.vocab_size}; check the checkpoint's generation_config.json.")
        systems = _per_stream(system, batch, "system")
        queries = _per_stream(query, batch, "query")
        prevs = _per_stream(previous_text, batch, "previous_text")
        if mode == "sliding":
            scfg = scfg.replace(text_sink=0)
        elif mode == "full":
            longest = max(len(encode_previous(tokenizer, p)) if p else 0 for p in prevs)
            scfg = scfg.replace(evict=False, text_sink=longest, text_window=0, text_round=None)
        elif mode == "recompute" and scfg.turns > scfg.vision_window:
            raise ValueError(f"recompute mode keeps one row per second of vision, so text_round ({scfg.turns}) must "
                             f"not exceed vision_window ({scfg.vision_window}).")
        self.scfg = scfg
        self.queries: list[str | None] = []
        self._prefixes: list[tuple[list[int], list[int], list[int]]] = []
        for b in range(batch):
            q, pre = self._session(systems[b], queries[b], prevs[b])
            self.queries.append(q)
            self._prefixes.append(pre)
        self._open = [True] * batch
        self._last_t1: list[float | None] = [None] * batch  # each stream's last stepped t1 (`_check_seconds`)
        self._questions: list[collections.deque[_Question]] = [collections.deque() for _ in range(batch)]
        # Commit the cache to the params' device: jit keys on committedness, and the cache that comes back
        # from a step is committed, so an uncommitted first cache would compile every step twice.
        leaf = jax.tree_util.tree_leaves(params)[0]
        self.device = next(iter(leaf.devices())) if isinstance(leaf, jax.Array) else jax.devices()[0]
        self.hosts: list[HostStream] = []
        self.cache: StreamCache | None = None
        self._newline = nl[0]
        if scfg.vision_tokens is not None:
            self._build(scfg)
        ids = list(range(batch)) if stream_ids is None else [int(i) for i in stream_ids]
        if len(ids) != batch:
            raise ValueError(f"stream_ids has {len(ids)} entries for {batch} streams; pass one per stream.")
        self.seed = seed
        self._base_key = base = jax.random.key(seed)
        self.keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(ids))
        # Compile the one-slot reseed now, so opening a session later compiles nothing.
        self.keys = _reseed(self.keys, np.int32(0), base, np.int32(ids[0]))
        self.last_logits: np.ndarray | None = None
        self.last_prefill_logits: np.ndarray | None = None
        self._meta: dict[tuple, dict] = {}
        self._feats: dict[tuple, jax.Array] = {}  # the vision feature buffer of each shape

    _preprocessing = None  # a checkpoint.Preprocessing, set by from_checkpoint

    @classmethod
    def from_checkpoint(cls, path, scfg: StreamConfig | None = None, *, dtype=None, quant: str | None = None,
                        sampling: SamplingConfig | None = None, **kwargs) -> "Streamer":
        """A Streamer of the checkpoint directory `path`, set up from its files as the stream CLI sets it up.

        Loads the model (`svlm_jax.load(path, dtype, quant=quant)`; dtype None keeps the stored one), its
        tokenizer, its sampling (`SamplingConfig.from_generation_config`) and stop ids (`stop_ids_for`) from
        generation_config.json, and its preprocessing.json, which `preprocessing` then holds and `frames`
        applies. scfg defaults to StreamConfig(vision_tokens=None): the vision rows are sized to the first
        second. kwargs: Streamer's other arguments (batch, seed, system, query, mode, ...).
        """
        from svlm_jax.checkpoint import load, load_config, load_preprocessing

        load_config(path)  # a missing or damaged checkpoint is named before its tokenizer is looked for
        pre = load_preprocessing(path)
        tok = ChatTokenizer.from_dir(path)
        if kwargs.get("stop_ids") is None:
            kwargs["stop_ids"] = stop_ids_for(tok, path)
        sampling = SamplingConfig.from_generation_config(path) if sampling is None else sampling
        cfg, params = load(path, dtype, quant=quant)
        st = cls(cfg, params, tok, StreamConfig(vision_tokens=None) if scfg is None else scfg, sampling=sampling,
                 **kwargs)
        st._preprocessing = pre
        return st

    @property
    def preprocessing(self):
        """The `checkpoint.Preprocessing` this model's frames are made with: its checkpoint's
        (`from_checkpoint`), else StreamingVLM's defaults."""
        from svlm_jax.checkpoint import Preprocessing

        return self._preprocessing if self._preprocessing is not None else Preprocessing()

    def frames(self, source, **overrides):
        """A `video.FrameStream` of `source` (file, URL, camera or frame iterator) made with `preprocessing`;
        overrides (start, end, fps, max_pixels, ...) as `FrameStream.for_model`."""
        from svlm_jax.video import FrameStream

        return FrameStream.for_model(source, self.preprocessing, **overrides)

    def _session(self, system: str, query: str | None, previous_text: str | None):
        """Check and tokenize one session's prompts -> (query or None, (prefix head, previous ids, prefix tail))."""
        scfg, tok = self.scfg, self.tok
        q = query if query else None
        if q and len(tok.encode(q)) > scfg.query_tokens:
            raise ValueError(f"The query takes {len(tok.encode(q))} tokens but StreamConfig.query_tokens "
                             f"is {scfg.query_tokens}; raise query_tokens or shorten the query.")
        prev = encode_previous(tok, previous_text) if previous_text else []
        if scfg.older_text == "svlm":  # the original prefills it whole; HostStream.start cuts it a second later
            prev = truncate_middle(prev, scfg.text_sink, scfg.text_window)
        pre = build_prefix(tok, prev, system=system)
        head, tail = pre.ids[:pre.prev_start], pre.ids[pre.prev_end:]
        if len(head) + len(tail) > scfg.prefix_tokens:
            raise ValueError(f"The system prompt and previous-text header take {len(head) + len(tail)} tokens "
                             f"but StreamConfig.prefix_tokens is {scfg.prefix_tokens}; raise prefix_tokens or "
                             f"shorten the system prompt.")
        return q, (head, pre.ids[pre.prev_start:pre.prev_end], tail)

    def _new_host(self, b: int) -> HostStream:
        """Fresh host bookkeeping for slot b: started with its session's prefix if the slot is open, else empty
        (an empty host's tables mark every slot empty, so the device rows of a free slot are invisible)."""
        hs = HostStream(self.scfg, im_end=self.tok.im_end, newline=self._newline, silence=self.silence,
                        spatial_merge_size=self.cfg.vision.spatial_merge_size,
                        tokens_per_second=self.cfg.vision.tokens_per_second)
        if self._open[b]:
            hs.start(*self._prefixes[b])
        return hs

    def _build(self, scfg: StreamConfig) -> None:
        """Create the host tables and the device cache for a config whose capacities are all known."""
        self._check_budget(scfg)
        self.scfg = scfg
        self.hosts = [self._new_host(b) for b in range(self.batch)]
        self._tables_memo: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # idle slots' tables
        self.cache = jax.device_put(init_cache(self.cfg, scfg, self.batch, self.cache_dtype), self.device)
        self._window_pixels: list[list[tuple[np.ndarray, tuple[int, ...]] | None]] = [
            [None] * scfg.vision_window for _ in range(self.batch)]

    # ---------------------------------------------------------------- sessions
    @property
    def free_slots(self) -> list[int]:
        """The slots that hold no session, in increasing order."""
        return [b for b in range(self.batch) if not self._open[b]]

    def is_open(self, slot: int) -> bool:
        """Whether `slot` holds a session."""
        return self._open[self._check_slot(slot)]

    def _check_slot(self, slot: int) -> int:
        if not isinstance(slot, (int, np.integer)) or not 0 <= slot < self.batch:
            raise ValueError(f"slot must be an int in 0..{self.batch - 1}, got {slot!r}.")
        return int(slot)

    def open(self, slot: int | None = None, *, query: str | None = DEFAULT_QUERY, previous_text: str | None = None,
             system: str = DEFAULT_SYSTEM, stream_id: int | None = None) -> int:
        """Start a new session in a free slot (the lowest, or `slot`) and return the slot.

        Its host policy starts fresh (system block, previous text, `query` in its first second) and its device
        rows get new metadata at the next step, so nothing the slot held before is ever visible. It samples
        with fold_in(seed, stream_id) (default: the slot), so it samples as a fresh Streamer with that id.
        Raises SlotsFull when no slot is free, ValueError for a slot in use. Nothing is compiled.
        """
        if slot is None:
            free = self.free_slots
            if not free:
                raise SlotsFull(f"All {self.batch} slots hold a session; close one first or build the Streamer "
                                f"with a larger batch.")
            slot = free[0]
        slot = self._check_slot(slot)
        if self._open[slot]:
            raise ValueError(f"Slot {slot} holds a session; close it first or open another slot.")
        q, pre = self._session(system, query, previous_text)  # validate before touching any state
        self.queries[slot], self._prefixes[slot] = q, pre
        self._open[slot] = True
        self._questions[slot].clear()
        if self.cache is not None:
            self.hosts[slot] = self._new_host(slot)
            self._tables_memo.pop(slot, None)
            self._window_pixels[slot] = [None] * self.scfg.vision_window
        sid = slot if stream_id is None else int(stream_id)
        self.keys = _reseed(self.keys, np.int32(slot), self._base_key, np.int32(sid))
        return slot

    def close(self, slot: int) -> None:
        """End the session in `slot`: the slot is free (idle at every step until opened again); questions still
        queued for it are dropped."""
        slot = self._check_slot(slot)
        self._open[slot] = False
        self._questions[slot].clear()
        if self.cache is not None:
            self.hosts[slot] = self._new_host(slot)
            self._tables_memo.pop(slot, None)

    def ask(self, slot: int, question: str, *, max_new_tokens: int | None = None, answer_prefix: str = "") -> None:
        """Queue a viewer's question for the next second that `slot` is stepped with a frame.

        The question is appended to that second's time stamp (`prompt.question_text`, the original's qa_stream
        template); the assistant turn then opens with `answer_prefix`, the answer (at most `max_new_tokens`,
        default all of StreamConfig.answer_tokens the prefix leaves, ended by "\n") and the commentary.
        The step's Comment carries the question and the answer. Several questions go to successive seconds.
        """
        slot = self._check_slot(slot)
        if not self._open[slot]:
            raise ValueError(f"Slot {slot} holds no session; open it before asking.")
        s = self.scfg
        if not s.question_tokens or not s.answer_tokens:
            raise ValueError(f"Questions need room in the cache but StreamConfig.question_tokens is "
                             f"{s.question_tokens} and answer_tokens is {s.answer_tokens}; set both (e.g. 32 and 16).")
        if not question or not question.strip():
            raise ValueError("The question is empty; pass some text.")
        n_q = len(self.tok.encode(question_text(question, False)))
        if n_q > s.question_tokens:
            raise ValueError(f"The question takes {n_q} tokens but StreamConfig.question_tokens is "
                             f"{s.question_tokens}; shorten it or raise question_tokens.")
        prefix = tuple(self.tok.encode(answer_prefix)) if answer_prefix else ()
        room = s.answer_tokens - len(prefix)
        limit = room if max_new_tokens is None else int(max_new_tokens)
        if room < 0 or not 0 <= limit <= room:
            raise ValueError(f"The answer prefix ({len(prefix)} tokens) and max_new_tokens ({max_new_tokens}) must "
                             f"fit StreamConfig.answer_tokens {s.answer_tokens}; lower them or raise answer_tokens.")
        self._questions[slot].append(_Question(question, prefix, limit))

    # ---------------------------------------------------------------- sizes
    def _check_budget(self, scfg: StreamConfig) -> None:
        from svlm_jax.memory import check_fits

        check_fits(cache_bytes(self.cfg, scfg, self.batch, self.cache_dtype),
                   f"The {self.mode} cache ({scfg.layout.size} slots x {self.batch} stream(s))",
                   "lower max_new_tokens, vision_window or the text sink/window.", self.device)
        if self.max_cache_bytes is not None:
            need = cache_bytes(self.cfg, scfg, self.batch, self.cache_dtype)
            if need > self.max_cache_bytes:
                raise CacheFull(f"The {self.mode} cache needs {need / 2**30:.3f} GiB for {scfg.vision_window} "
                                f"seconds, above the cap of {self.max_cache_bytes / 2**30:.3f} GiB.")

    def cache_bytes(self) -> int:
        """Bytes of the device cache plus the host bookkeeping (0 before a lazily sized cache exists)."""
        if self.cache is None:
            return 0
        return tree_bytes(self.cache) + sum(h.nbytes() for h in self.hosts)

    def _grow(self) -> None:
        """Full attention: double the number of vision rows (slots keep their index)."""
        scfg = self.scfg.replace(vision_window=2 * self.scfg.vision_window)
        self._check_budget(scfg)
        pad = scfg.layout.size - self.scfg.layout.size
        c = self.cache
        grow_kv = lambda a: jnp.pad(a, ((0, 0), (0, pad)) + ((0, 0),) * (a.ndim - 2))  # noqa: E731  [B, S, ...]
        self.cache = StreamCache(k=jax.tree.map(grow_kv, c.k), v=jax.tree.map(grow_kv, c.v),
                                 order=jnp.pad(c.order, ((0, 0), (0, pad)), constant_values=-1),
                                 pos=jnp.pad(c.pos, ((0, 0), (0, pad), (0, 0))),
                                 tokens=jnp.pad(c.tokens, ((0, 0), (0, pad)), constant_values=-1))
        for h in self.hosts:
            h.grow(scfg)
        self._tables_memo.clear()
        for w in self._window_pixels:
            w.extend([None] * (scfg.vision_window - len(w)))
        self.scfg = scfg

    # ---------------------------------------------------------------- vision
    def _vision_meta(self, grid: tuple[int, ...], items: int):
        key = (grid, items)
        if key not in self._meta:
            self._meta[key] = vision_metadata(np.asarray([grid] * items), self.cfg.vision)
        return self._meta[key]

    def _encode(self, pixels: list[np.ndarray | None], grids: list[tuple | None], items: int, cap: int):
        """Encode per stream `items` seconds of one grid each -> features [B, items*cap, D] on device.

        One call per active stream, so the compiled shapes depend on the frame size alone, never on how many
        sessions are active: sessions that come and go compile nothing, and idle slots cost no vision. The
        [B, items*cap, D] buffer persists; an idle stream's row keeps stale features that nothing reads.
        """
        if all(g is None for g in grids):
            return None
        shape = (self.batch, items * cap, self.cfg.text.hidden_size)
        buf = self._feats.pop(shape, None)
        if buf is None:
            buf = jax.device_put(jnp.zeros(shape, self.cfg.compute_dtype), self.device)
        for b, g in enumerate(grids):
            if g is not None:
                feats = encode_vision(self.cfg, self.params, pixels[b], self._vision_meta(g, items), items=items,
                                      cap=cap)  # [items, cap, D]
                buf = _place(buf, feats, np.int32(b))
        self._feats[shape] = buf
        return buf

    # ---------------------------------------------------------------- one second
    def _check_seconds(self, seconds: Sequence[Any | None]) -> None:
        """Refuse a second that cannot be stepped before any state changes; StreamInputError names its stream.

        Per stream: finite time stamps t0 < t1 that do not go back before the stream's previous second,
        pixel_values [N, patch_dim] that match grid_thw, vision tokens within StreamConfig.vision_tokens,
        and the round's text (time stamp, first-second query, queued question) within the row's prompt room.
        So a batch with one bad stream can be stepped again with None in its place, and the other streams
        go on exactly as if it had never been there.
        """
        cfg, scfg, merge = self.cfg, self.scfg, self.cfg.vision.merge_unit
        checked: dict[int, tuple[float, float, int, bool]] = {}
        for b, sec in enumerate(seconds):
            if sec is None:
                continue
            try:
                t0, t1 = float(sec.t0), float(sec.t1)
                g = tuple(int(x) for x in np.asarray(sec.grid_thw).reshape(-1)[:3])
                shape = tuple(np.shape(sec.pixel_values))
            except (AttributeError, TypeError, ValueError, OverflowError):
                raise StreamInputError(f"Stream {b}: a second needs numeric t0 and t1, grid_thw and pixel_values "
                                       f"(a video.Second).", stream=b) from None
            if not (math.isfinite(t0) and math.isfinite(t1) and t0 < t1):
                raise StreamInputError(f"Stream {b}: a second's time stamps t0={t0!r}, t1={t1!r} must be finite "
                                       f"with t0 < t1.", stream=b)
            first = not self.hosts or self.hosts[b].second == 0
            last = None if first else self._last_t1[b]
            if last is not None and t0 < last - 1e-6:
                raise StreamInputError(f"Stream {b}: a second starting at {t0:g} s comes after one that ended at "
                                       f"{last:g} s; time stamps must not go back.", stream=b)
            if len(g) != 3 or min(g) < 1 or shape != (int(np.prod(g)), cfg.vision.patch_dim):
                raise StreamInputError(f"Stream {b}: pixel_values of shape {shape} do not match grid_thw {g} (need "
                                       f"({int(np.prod(g)) if g else 0}, {cfg.vision.patch_dim})).", stream=b)
            n_vis = int(np.prod(g)) // merge
            if scfg.vision_tokens is not None and n_vis > scfg.vision_tokens:
                raise StreamInputError(f"Stream {b}: a second of grid {g} has {n_vis} vision tokens but "
                                       f"StreamConfig.vision_tokens is {scfg.vision_tokens}; raise vision_tokens or "
                                       f"lower the resolution.", stream=b)
            if self.mode == "recompute" and self.cache is not None and any(
                    r is not None and r[1] != g for r in self._window_pixels[b]):
                raise StreamInputError(f"Stream {b}: recompute mode needs one frame size for the whole window.",
                                       stream=b)
            checked[b] = (t0, t1, n_vis, first)
        vision = scfg.vision_tokens if scfg.vision_tokens is not None else max(
            (n for _, _, n, _ in checked.values()), default=0)
        room = scfg.round_tokens + scfg.question_tokens  # the row's prompt slots besides vision and query
        for b, (t0, t1, n_vis, first) in checked.items():
            q = self.queries[b] if first else None
            qa = self._questions[b][0] if self._questions[b] else None
            rnd = build_round(self.tok, t0, t1, n_vis, query=q,
                              question=question_text(qa.text, first) if qa else None)
            text = len(rnd.prompt) - n_vis - (len(self.tok.encode(q)) if q else 0)
            if text > room + vision - n_vis:  # HostStream.plan's bound on one round
                raise StreamInputError(f"Stream {b}: the round at {t0:g}-{t1:g} s needs {text} text tokens besides "
                                       f"vision and query but StreamConfig.round_tokens is {scfg.round_tokens} "
                                       f"(and question_tokens {scfg.question_tokens}); send time stamps of a few "
                                       f"digits, a shorter question, or raise round_tokens.", stream=b)
        for b, (_, t1, _, _) in checked.items():
            self._last_t1[b] = t1

    def step(self, seconds: Sequence[Any | None], force: Sequence[Sequence[int] | None] | None = None
             ) -> list[Comment | None]:
        """Advance every stream by one second and return its commentary (None for streams given None).

        seconds: one per stream, each with t0, t1, pixel_values [N, patch_dim], grid_thw [1, 3] and
        second_per_grid_ts (a `video.Second`), or None for a stream that has ended. force: optional
        content ids per stream to write instead of sampling (teacher forcing, e.g. replaying reference
        commentary); the turn then ends with <|im_end|> unless it has max_new_tokens tokens.
        """
        if len(seconds) != self.batch:
            raise ValueError(f"step got {len(seconds)} seconds for {self.batch} streams; pass one per stream "
                             f"(None for an ended stream).")
        for b, sec in enumerate(seconds):
            if sec is not None and not self._open[b]:
                raise ValueError(f"step got a second for slot {b}, which holds no session; open it first or pass "
                                 f"None there.")
        self._check_seconds(seconds)
        cfg, merge = self.cfg, self.cfg.vision.merge_unit
        if self.cache is None:  # vision_tokens=None: size the rows to the first second's frames
            sizes = [int(np.prod(np.asarray(s.grid_thw).reshape(-1)[:3])) // merge for s in seconds if s is not None]
            if not sizes:
                return [None] * self.batch
            self._build(self.scfg.replace(vision_tokens=max(sizes)))
        scfg = self.scfg
        if not scfg.evict and any(s is not None and h.second >= scfg.vision_window
                                  for s, h in zip(seconds, self.hosts)):
            self._grow()
            scfg = self.scfg
        lay = scfg.layout
        t_start = time.perf_counter()

        # Vision.
        grids: list[tuple | None] = []
        pixels: list[np.ndarray | None] = []
        n_vis: list[int] = []
        for b, sec in enumerate(seconds):
            if sec is None:
                grids.append(None), pixels.append(None), n_vis.append(0)
                continue
            g = tuple(int(x) for x in np.asarray(sec.grid_thw).reshape(-1)[:3])
            px = np.asarray(sec.pixel_values, np.float32)
            if px.shape != (int(np.prod(g)), cfg.vision.patch_dim):
                raise ValueError(f"Stream {b}: pixel_values of shape {px.shape} do not match grid_thw {g} "
                                 f"(need ({int(np.prod(g))}, {cfg.vision.patch_dim})).")
            if int(np.prod(g)) // merge > scfg.vision_tokens:
                raise ValueError(f"Stream {b}: a second of grid {g} has {int(np.prod(g)) // merge} vision tokens "
                                 f"but StreamConfig.vision_tokens is {scfg.vision_tokens}; raise vision_tokens "
                                 f"or lower the resolution.")
            grids.append(g), pixels.append(px), n_vis.append(int(np.prod(g)) // merge)
        if self.mode == "recompute":
            feats = self._encode_window(seconds, grids, pixels)
        else:
            feats = self._encode(pixels, grids, 1, scfg.vision_tokens)
        if feats is None:
            return [None] * self.batch
        feats.block_until_ready()
        t_vision = time.perf_counter()

        # Host plans, then the device relayout and prefill.
        plans = [None] * self.batch
        asked: list[_Question | None] = [None] * self.batch
        for b, sec in enumerate(seconds):
            if sec is None:
                continue
            h = self.hosts[b]
            q = self.queries[b] if h.second == 0 else None
            qa = asked[b] = self._questions[b][0] if self._questions[b] else None
            rnd = build_round(self.tok, float(sec.t0), float(sec.t1), n_vis[b], query=q,
                              question=question_text(qa.text, h.second == 0) if qa else None)
            span = (0, 0)
            if q:
                q0 = rnd.vision_start + n_vis[b] + 1
                span = (q0, q0 + len(self.tok.encode(q)))
            spg = float(getattr(sec, "second_per_grid_ts", 1.0))
            plans[b] = h.plan(rnd.prompt, rnd.vision_start, n_vis[b], grids[b], spg, span,
                              answer_prefix=qa.prefix if qa else ())
        for b, qa in enumerate(asked):
            if qa is not None:  # placed: it is this second's question now
                self._questions[b].popleft()
        self._relayout(plans)
        logits0 = self._prefill(plans, feats)
        logits0.block_until_ready()
        t_prefill = time.perf_counter()

        # Decode.
        out, n, cut = self._generate(plans, logits0, seconds, force, asked)
        t_decode = time.perf_counter()
        comments: list[Comment | None] = []
        for b, sec in enumerate(seconds):
            if sec is None:
                comments.append(None)
                continue
            written = [int(x) for x in out[b, :n[b]]]
            last = int(out[b, n[b]]) if n[b] < out.shape[1] and out[b, n[b]] >= 0 else None  # what ended it
            stop = last if last in self.stop_ids else None
            # A capped turn ends on a content token that was sampled but not written, like a stop id.
            generated = written + ([last] if last is not None and stop is None else [])
            self.hosts[b].commit(generated, stop, cached=len(written))
            content = generated[cut[b]:]
            shown = content[:-len(self.silence)] if self.silence and content[-len(self.silence):] == self.silence \
                else content
            qa, answer = asked[b], ()
            if qa is not None:  # the answer: up to its "\n" (absent when the turn ended inside the answer)
                answer = tuple(written[:cut[b]])
                answer = answer[:-1] if answer and answer[-1] == self._newline else answer
            comments.append(Comment(
                stream=b, index=self.hosts[b].second - 1, t0=float(sec.t0), t1=float(sec.t1),
                text=self.tok.decode(shown).strip(), tokens=tuple(content),
                vision_ms=1e3 * (t_vision - t_start), prefill_ms=1e3 * (t_prefill - t_vision),
                decode_ms=1e3 * (t_decode - t_prefill), n_tokens=len(generated),
                partial=bool(getattr(sec, "partial", False)),
                question=qa.text if qa else None, answer=self.tok.decode(list(answer)).strip() if qa else None,
                answer_tokens=answer))
        return comments

    def _encode_window(self, seconds, grids, pixels):
        """Recompute mode: the vision of every second in the window, row by row -> [B, V*cap, D]."""
        v = self.scfg.vision_window
        stacked: list[np.ndarray | None] = []
        for b, sec in enumerate(seconds):
            if sec is None:
                stacked.append(None)
                continue
            rows = self._window_pixels[b]
            rows[self.hosts[b].second % v] = (pixels[b], grids[b])
            for r in range(v):
                if rows[r] is not None and rows[r][1] != grids[b]:
                    raise ValueError(f"Stream {b}: recompute mode needs one frame size for the whole window.")
            stacked.append(np.concatenate([rows[r][0] if rows[r] is not None else np.zeros_like(pixels[b])
                                           for r in range(v)]))
        return self._encode(stacked, grids, v, self.scfg.vision_tokens)

    def _relayout(self, plans) -> None:
        lay = self.scfg.layout
        m = lay.content_len
        b = self.batch
        src = np.zeros((b, m), np.int32)
        dst = np.full((b, m), lay.size, np.int32)
        orders = np.empty((b, lay.size), np.int32)
        pos = np.empty((b, lay.size, 3), np.float32)
        toks = np.empty((b, lay.size), np.int32)
        for i, p in enumerate(plans):
            # The host tables mirror the device's, so an idle stream just gets its own back (computed once
            # per idle stretch: a free slot costs a copy of its empty tables, no sorting).
            if p is None:
                if i not in self._tables_memo:
                    self._tables_memo[i] = self.hosts[i].tables()
                orders[i], pos[i], toks[i] = self._tables_memo[i]
            else:
                self._tables_memo.pop(i, None)  # it changes this second
                orders[i], pos[i], toks[i] = self.hosts[i].tables()
            if p is not None:
                k = p.move_src.size
                src[i, :k], dst[i, :k] = p.move_src, p.move_dst
        self.cache = relayout(self.cache, src, dst, orders, pos, toks)

    def _prefill(self, plans, feats):
        lay = self.scfg.layout
        # Recompute prefills the whole window every second: use longer chunks (a multiple of the round).
        t = lay.chunk * (max(1, 512 // lay.chunk) if self.mode == "recompute" else 1)
        lists = []
        for i, p in enumerate(plans):
            if p is None:
                lists.append((np.zeros(0, np.int32),) * 3)
            elif self.mode == "recompute":
                lists.append(self._recompute_list(i))
            else:
                lists.append((p.new_slots, p.new_tokens, p.new_vision))
        n_chunks = max(1, max(math.ceil(len(s) / t) for s, _, _ in lists))
        total = n_chunks * t
        slots = np.full((self.batch, total), lay.size, np.int32)
        toks = np.zeros((self.batch, total), np.int32)
        vis = np.full((self.batch, total), -1, np.int32)
        for i, (s, tk, v) in enumerate(lists):
            # Right-aligned, so every stream's last token is the last position of the last chunk.
            if len(s):
                slots[i, total - len(s):], toks[i, total - len(s):], vis[i, total - len(s):] = s, tk, v
        logits = None
        for c in range(n_chunks):
            sl = slice(c * t, (c + 1) * t)
            self.cache, logits = prefill(self.cfg, self.params, self.cache, toks[:, sl], slots[:, sl], vis[:, sl],
                                         feats)
        return logits

    def _recompute_list(self, i: int):
        """Every retained slot of stream i in logical order, vision indexed into the window's features."""
        h, lay = self.hosts[i], self.scfg.layout
        toks, _, slots = h.retained()
        vis = h.vis[slots].astype(np.int64)
        row = (slots - lay.rows) // lay.row_len
        vis = np.where(vis >= 0, row * self.scfg.vision_tokens + vis, -1)
        return slots.astype(np.int32), toks.astype(np.int32), vis.astype(np.int32)

    def _generate(self, plans, logits0, seconds, force, asked):
        b, m = self.batch, self.scfg.max_new_tokens
        answer_len = np.full(b, -1, np.int32)
        base_slot = np.zeros(b, np.int32)
        base_order = np.zeros(b, np.int32)
        base_pos = np.zeros(b, np.float32)
        active = np.zeros(b, bool)
        forced = np.zeros((b, m), np.int32)
        forced_len = np.full(b, -1, np.int32)
        secs = np.zeros(b, np.int32)
        for i, p in enumerate(plans):
            if p is None:
                continue
            base_slot[i], base_order[i], base_pos[i], active[i] = p.base_slot, p.base_order, p.base_pos, True
            secs[i] = self.hosts[i].second - 1
            if asked[i] is not None:
                answer_len[i] = asked[i].limit
            if force is not None and force[i] is not None:
                f = [int(x) for x in force[i]]
                if len(f) > m:
                    raise ValueError(f"Stream {i}: {len(f)} forced tokens exceed max_new_tokens {m}.")
                forced[i, :len(f)], forced_len[i] = f, len(f)
        self.cache, out, n, cut, logits = generate(
            self.cfg, self.params, self.cache, logits0, base_slot, base_order, base_pos, active, forced, forced_len,
            self.keys, secs, answer_len, sampling=self.sampling, max_new=m, stop_ids=self.stop_ids,
            keep_logits=self.keep_logits, max_answer=self.scfg.answer_tokens, newline=self._newline,
            rotate_once=self.rotate_once)
        out, n, cut = np.asarray(out), np.asarray(n), np.asarray(cut)
        if self.keep_logits:
            self.last_logits = np.asarray(logits)
            self.last_prefill_logits = np.asarray(logits0)
        return out, n, cut

    # ---------------------------------------------------------------- convenience
    def run(self, seconds: Iterable[Any]) -> Iterator[Comment]:
        """Batch 1: yield one Comment per second of `seconds` (e.g. a `video.FrameStream`)."""
        if self.batch != 1:
            raise ValueError(f"run drives one stream; this Streamer has {self.batch}; call step instead.")
        for sec in seconds:
            yield self.step([sec])[0]


def synthetic_seconds(cfg: ModelConfig, grid_hw: tuple[int, int] = (4, 4), *, fps: int = 2, seconds: int | None = None,
                      start: float = 0.0, seed: int = 0) -> Iterator[Second]:
    """Seconds of random normalised pixels, no decoding: for tests and benchmarks.

    Each has patch grid (ceil(fps/2), h, w) for grid_hw = (h, w) in patches (even numbers), so
    h*w/4 vision tokens per temporal grid. Yields forever unless `seconds` is given.
    """
    h, w = grid_hw
    if h % 2 or w % 2 or h < 2 or w < 2:
        raise ValueError(f"grid_hw {grid_hw} must be even patch counts >= 2 (the 2x2 merge needs them).")
    grid = np.array([[math.ceil(fps / TEMPORAL_PATCH_SIZE), h, w]], np.int64)
    rng = np.random.default_rng(seed)
    frames = np.zeros((fps, 0, 0, 3), np.uint8)  # not used by the model; kept empty
    i = 0
    while seconds is None or i < seconds:
        px = rng.standard_normal((int(np.prod(grid)), cfg.vision.patch_dim), dtype=np.float32)
        yield Second(index=i, t0=start + i, t1=start + i + 1, fps=fps, frames=frames, pixel_values=px, grid_thw=grid)
        i += 1
