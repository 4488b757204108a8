"""The original's streaming policy written the slow, obvious way: one id list, edited as StreamingVLM edits it.

Written from docs/ORIGINAL.md §Streaming inference (mit-han-lab/streaming-vlm, `inference.py`: `process_past_kv` and the
loop around it), without slots, rings or keys. The state is the list the original keeps in
`prev_generated_ids`, each id tagged with where it came from so positions can be looked up:

    system block + `<|im_start|>previous text\\n`  older text  `<|im_end|>\\n`  [pinned query]  rounds...

Second 0 appends the first round (query included); second t > 0 first runs `process_past_kv`:
  1. t >= text_round: the oldest turn (round t - text_round) moves its tokens [im_start+3, im_end-2]
     (all but the token before <|im_end|>) to the end of the older text, then its whole assistant block
     (with the "\\n" after it) is deleted; its user text `Time=...` too when the vision stays longer.
  2. t >= vision_window and vision_window < text_round: round t - vision_window loses its vision block.
  3. t >= max(vision_window, text_round): round t - max(...) loses its user block (query pinned after the
     previous-text block instead, with keep_query, an svlm-jax option).
  4. the older text keeps its first text_sink and last text_window - 1 tokens (the cut
     [start+4+sink, end-window-1] fires only at t > 0, so second 0 sees the whole previous text).
then appends "\\n" (dropped when the list already ends in one) and the new round. A turn ends as the
original's `generate` leaves it: content, the stop id if it is not <|im_end|>, then <|im_end|> (appended
when the stop was another id or the 20-token cap). The last token `generate` sampled has no K/V until
the next second's prefill: a capped turn's last content token (`uncached`), or the stop id.

`older_text="svlm"` swaps in svlm-jax's own rules: a turn moves its content minus a trailing " ..." (and
minus a stop id), older text keeps text_sink + text_window tokens, and the previous text is cut before
the first second.

Positions: "contiguous" numbers the list from 0 with the get_rope_index rule (rope.block_positions);
"native" gives every token the position it has in the whole history, nothing ever deleted.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from svlm_jax.config import ModelConfig
from svlm_jax.rope import block_positions


@dataclasses.dataclass
class History:
    """What a stream is given and says. rounds[s] = (prompt ids, grid_thw, second_per_grid_t, query_span);
    contents[s] = the content ids generated in second s; stops[s] = the id that ended it (None at the cap).
    specials: the ids of <|im_start|>, <|vision_start|>, <|vision_end|>."""

    head: list[int]
    previous: list[int]
    tail: list[int]
    im_end: int
    newline: int
    silence: list[int]
    im_start: int
    vision_start: int
    vision_end: int
    rounds: list = dataclasses.field(default_factory=list)
    contents: list = dataclasses.field(default_factory=list)
    stops: list = dataclasses.field(default_factory=list)


def _cut(seq, sink: int, tail: int):
    """First `sink` and last `tail` items of seq when it is longer than both together."""
    return seq if len(seq) <= sink + tail else seq[:sink] + (seq[len(seq) - tail:] if tail else [])


class Reference:
    """The original's id list for one stream, advanced one second at a time (see the module docstring)."""

    def __init__(self, cfg: ModelConfig, h: History, *, vision_window: int, text_round: int, text_sink: int,
                 text_window: int, keep_query: bool = False, older_text: str = "original"):
        self.cfg, self.h = cfg, h
        self.v, self.r, self.sink, self.keep_query, self.rule = vision_window, text_round, text_sink, keep_query, older_text
        self.tail_keep = max(text_window - 1, 0) if older_text == "original" else text_window
        prev = [(("older", j), x) for j, x in enumerate(h.previous)]
        self.older = prev if older_text == "original" else _cut(prev, text_sink, text_window)
        self.first_previous = list(self.older)  # what the first prefill holds
        self.pinned: list = []
        self.body: list = []  # the rounds part of the list, tagged
        self.moved = 0  # tokens that turns have moved to older text so far
        self.t = -1

    # -------------------------------------------------------------- the original's edits
    def _spans(self, s: int) -> dict[str, set[int]]:
        """Indices of round s's prompt: user text, vision block with its markers, assistant header, query."""
        h = self.h
        prompt, q = h.rounds[s][0], h.rounds[s][3]
        vs = prompt.index(h.vision_start)
        ve = prompt.index(h.vision_end)
        first_nl = prompt.index(h.newline)
        asst = len(prompt) - 1 - prompt[::-1].index(h.im_start)
        return {"user_text": set(range(first_nl + 1, vs)), "vision": set(range(vs, ve + 1)),
                "header": set(range(asst, len(prompt))), "query": set(range(*q))}

    def _turn(self, s: int) -> list:
        """Round s's turn after its header as the original's list holds it: content, stop id, <|im_end|>."""
        h = self.h
        toks = [(("content", s, i), x) for i, x in enumerate(h.contents[s])]
        stop = h.stops[s]
        if stop is not None and stop != h.im_end:
            toks.append((("content", s, len(h.contents[s])), stop))
        return toks + [(("end", s, 0), h.im_end)]

    def _retire_turn(self, s: int) -> None:
        h = self.h
        body_ids = [(tag, x) for tag, x in self.body if tag[0] == "content" and tag[1] == s]
        if self.rule == "original":
            moved = body_ids[:-1]  # [im_start+3, im_end-2]
        else:
            moved = [(tag, x) for tag, x in body_ids if tag[2] < len(h.contents[s])]
            if h.silence and [x for _, x in moved[-len(h.silence):]] == h.silence:
                moved = moved[:-len(h.silence)]
        self.older += moved
        self.moved += len(moved)
        sp = self._spans(s)
        gone = sp["header"] | (sp["user_text"] if self.v > self.r else set())

        def dropped(tag):
            return ((tag[0] in ("content", "end") and tag[1] == s)
                    or (tag[0] == "round" and tag[1] == s and tag[2] in gone))

        self.body = [(tag, x) for tag, x in self.body if not dropped(tag)]

    def _drop_vision(self, s: int) -> None:
        vis = self._spans(s)["vision"]
        self.body = [(tag, x) for tag, x in self.body if not (tag[0] == "round" and tag[1] == s and tag[2] in vis)]

    def _drop_user(self, s: int) -> None:
        q = self._spans(s)["query"]
        if self.keep_query:
            self.pinned += [(tag, x) for tag, x in self.body if tag[0] == "round" and tag[1] == s and tag[2] in q]
        self.body = [(tag, x) for tag, x in self.body if not (tag[0] in ("round", "content", "end") and tag[1] == s)]

    def advance(self) -> None:
        """Second t = self.t + 1: the previous turn's end, the edits, then the new round and its content."""
        h, t = self.h, self.t + 1
        if t > 0:
            self.body += self._turn(t - 1)[len(h.contents[t - 1]):]  # stop id, <|im_end|> (content is in)
            if t >= self.r:
                self._retire_turn(t - self.r)
            if self.v < self.r and t >= self.v:
                self._drop_vision(t - self.v)
            if t >= max(self.v, self.r):
                self._drop_user(t - max(self.v, self.r))
            self.older = _cut(self.older, self.sink, self.tail_keep)
            if self.ids()[-1] != h.newline:
                self.body.append((("end", t - 1, 1), h.newline))
        self.body += [(("round", t, i), x) for i, x in enumerate(h.rounds[t][0])]
        self.body += [(("content", t, i), x) for i, x in enumerate(h.contents[t])]
        self.t = t

    # -------------------------------------------------------------- reads
    def _seq(self):
        h = self.h
        return ([(("head", i), x) for i, x in enumerate(h.head)] + self.older
                + [(("tail", i), x) for i, x in enumerate(h.tail)] + self.pinned + self.body)

    def ids(self) -> list[int]:
        """The retained ids after the latest second's content (its stop and <|im_end|> still pending)."""
        return [x for _, x in self._seq()]

    def uncached(self) -> int:
        """How many of the last ids have no K/V yet: the last token of a turn cut at the cap (1), else 0.

        The original's `generate` runs no step on the token it samples last, so a capped turn's last token,
        like a stop id, is cached only by the next second's prefill."""
        return int(self.t >= 0 and self.h.stops[self.t] is None and len(self.h.contents[self.t]) > 0)

    def cached(self, pos_mode: str) -> tuple[list[int], np.ndarray]:
        """(ids, positions [N, 3]) of the retained tokens that hold K/V: `ids()` without the uncached tail."""
        n = len(self._seq()) - self.uncached()
        return self.ids()[:n], self.positions(pos_mode)[:n]

    def older_length(self) -> int:
        """Tokens of older text before truncation: the previous text plus everything turns moved."""
        return len(self.h.previous) + self.moved

    def _positions(self, seq, rounds) -> np.ndarray:
        ids = np.asarray([x for _, x in seq], np.int64)
        pos, _ = block_positions(self.cfg, ids, video_grids=[self.h.rounds[s][1] for s in rounds],
                                 second_per_grid_ts=[self.h.rounds[s][2] for s in rounds], time_mode="float")
        return pos.T  # [N, 3]

    def positions(self, pos_mode: str) -> np.ndarray:
        """[N, 3] positions of `ids()`: renumbered from 0 ("contiguous") or as in the whole history ("native")."""
        seq = self._seq()
        if pos_mode == "contiguous":
            vs = self.h.vision_start
            rounds = [tag[1] for tag, x in seq if tag[0] == "round" and x == vs]
            return self._positions(seq, rounds)
        h = self.h
        full = [(("head", i), x) for i, x in enumerate(h.head)] + self.first_previous
        full += [(("tail", i), x) for i, x in enumerate(h.tail)]
        for s in range(self.t + 1):
            if s:
                full += self._turn(s - 1)[len(h.contents[s - 1]):] + [(("end", s - 1, 1), h.newline)]
            full += [(("round", s, i), x) for i, x in enumerate(h.rounds[s][0])]
            full += [(("content", s, i), x) for i, x in enumerate(h.contents[s])]
        table = dict(zip([tag for tag, _ in full], self._positions(full, range(self.t + 1))))
        return np.stack([table[tag] for tag, _ in seq])


class OriginalKV:
    """The original's K/V cache beside its id list: what each token's K/V are, and so the logits of every step.

    The original computes a token's K/V once, in the context the cache holds when the token is fed, and
    keeps them through later edits: moved turns keep theirs, deleted tokens take theirs along. Keys are
    stored un-rotated and rotated at attention time with the positions of the current list (its "shrink"
    mode). Each second it feeds every token that has no K/V yet (the previous turn's last sampled token and
    <|im_end|>, the new round) and then the turn's tokens but the last one sampled. Here that is one causal
    pass over those tokens against the stored K/V of the rest, which gives the same K/V and logits as the
    original's prefill plus decode steps; the decoder layers are the model's own (parity-tested against HF),
    and nothing of the streaming cache is used.
    """

    def __init__(self, cfg: ModelConfig, params, ref: Reference):
        self.cfg, self.params, self.ref = cfg, params, ref
        self.kv: dict = {}  # tag -> per-layer (k [KV, hd], v [KV, hd])

    def step(self, pixel_values, grid_thw) -> np.ndarray:
        """Advance the reference one second (its round given by the History) and return the logits that chose
        each token sampled in it, [n_sampled, V] float32; pixel_values [N, patch_dim] / grid_thw [1, 3] are the
        second's frames."""
        import flax.linen as nn
        import jax.numpy as jnp

        from svlm_jax.model import Qwen25VL
        from svlm_jax.rope import text_cos_sin
        from svlm_jax.text import LayerKV
        from svlm_jax.vision import vision_metadata

        self.ref.advance()
        seq = self.ref._seq()
        tags = [tag for tag, _ in seq]
        self.kv = {tag: kv for tag, kv in self.kv.items() if tag in set(tags)}  # deleted tokens lose theirs
        n_fed = len(seq) - self.ref.uncached()
        old = [i for i, tag in enumerate(tags) if tag in self.kv]
        new = [i for i in range(n_fed) if tags[i] not in self.kv]
        assert old == list(range(len(old))) and new == list(range(len(old), n_fed)), "unfed tokens are not a suffix"
        n_old, t = len(old), self.ref.t
        pos = self.ref.positions("contiguous")[:n_fed]  # [N, 3]
        ids = np.asarray([x for _, x in seq[:n_fed]], np.int32)
        cos, sin = text_cos_sin(jnp.asarray(pos.T[:, None], jnp.float32), self.cfg.text, self.cfg.compute_dtype)
        vis = [j for j, i in enumerate(new) if ids[i] == self.cfg.video_token_id]
        mask = np.arange(n_fed)[None, :] <= np.arange(n_old, n_fed)[:, None]  # [T, S]: causal over the list
        shape = (1, n_fed, self.cfg.text.num_key_value_heads, self.cfg.text.head_dim)  # [1, S, KV, hd]
        kv = []
        for layer in range(self.cfg.text.num_hidden_layers):
            k, v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
            for i in old:
                k[0, i], v[0, i] = self.kv[tags[i]][layer]
            kv.append(LayerKV(jnp.asarray(k, self.cfg.compute_dtype), jnp.asarray(v, self.cfg.compute_dtype), cos, sin,
                              jnp.arange(n_old, n_fed)[None]))

        def fn(m: Qwen25VL):
            x = m.embed(jnp.asarray(ids[n_old:])[None])  # [1, T, D]
            if vis:
                meta = vision_metadata(np.asarray(grid_thw), self.cfg.vision)
                x = x.at[0, jnp.asarray(vis)].set(m.encode_vision(jnp.asarray(pixel_values), meta).astype(x.dtype))
            h, written = m.decode_with_tables(x, cos[:, n_old:], sin[:, n_old:], jnp.asarray(mask)[None], kv)
            return m.logits(h)[0], written

        logits, written = nn.apply(fn, Qwen25VL(self.cfg))({"params": self.params})
        for j, i in enumerate(new):
            self.kv[tags[i]] = [(np.asarray(k[0, i]), np.asarray(v[0, i])) for k, v in written]
        # The logits that chose each sampled token: the round's last token's, then every fed content token's.
        first = max(i for i in range(n_fed) if tags[i][0] == "round" and tags[i][1] == t)
        return np.asarray(logits)[first - n_old:]
