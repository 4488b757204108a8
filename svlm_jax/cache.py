"""The streaming cache: one immutable pytree on the device, and its bookkeeping on the host.

Every stream owns S slots, laid out statically from a `StreamConfig` alone:

    [ prefix | query | text sink | vision ring: V rows of R slots | text ring ]
      \\______ sinks ____________/

  * prefix: the system block, the previous-text header `<|im_start|>previous text\\n` and its tail
    `<|im_end|>\\n`. Written once.
  * query: the query of the first second. While that second is in the vision window the query is
    ordered inside its user block; afterwards it is dropped, or pinned (kept) with `keep_query`.
  * text sink: the first `text_sink` tokens of older commentary.
  * vision ring: one row per second of the last max(vision_window, text_round) seconds. A row holds the
    round's user block (`<|im_start|>user\nTime=a-bs<|vision_start|>` + vision + `<|vision_end|><|im_end|>\n`),
    the assistant header, the commentary content and its `<|im_end|>\n` tail. Second t uses row t % rows.
  * text ring: the last `text_window` tokens of older commentary (one fewer under the original's
    rule); older token j lives in ring slot (j - text_sink) % text_window, so overflow overwrites the oldest.

The policy is the original's `process_past_kv` (docs/ORIGINAL.md §The cache policy). When a turn leaves
(text_round seconds later) its content, all but the token before `<|im_end|>`, becomes older commentary: the K/V
of those slots are copied into the text sink or ring, never recomputed. Its format tokens are dropped; the row is
reused once both its vision and its turn are gone. In the first second the whole previous text is
present (its middle borrows the rows of later seconds) and is cut at the start of the second one.

Device side (`StreamCache`): per layer the un-rotated K and V [B, S, KV, hd], plus per slot the index in
logical order (`order`, -1 = empty), the M-RoPE position (`pos`) and the token id (`tokens`). Causality is
`order[key] <= order[query]`; keys are rotated at attention time with `pos`, so renumbering positions
never touches K.

Host side (`HostStream`, numpy): which token sits in which slot, its logical key, and the rotary unit it
belongs to. Each second it evicts, places the new tokens, renumbers positions and hands the device the
new metadata tables, the K/V moves and the list of tokens to prefill.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from svlm_jax.config import ModelConfig
from svlm_jax.rope import vision_block_positions
from svlm_jax.text import QuantKV

POS_MODES = ("contiguous", "native")
# "original": StreamingVLM's older-text rules (docs/ORIGINAL.md §The cache policy);
# "svlm": svlm-jax's own (docs/STREAMING.md).
OLDER_TEXT_RULES = ("original", "svlm")

# Logical bands, in order. A slot's logical key is band << _BAND_SHIFT | seq.
_HEAD, _OLDER, _TAIL, _PINNED, _ROUND = range(5)
_BAND_SHIFT = 44


def _key(band: int, seq) -> Any:
    return (np.int64(band) << _BAND_SHIFT) + np.asarray(seq, np.int64)


class CacheFull(RuntimeError):
    """Raised when a stream needs more slots than its cache holds (full attention past its memory cap)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class StreamConfig:
    """Retention policy and capacities of the streaming cache. The cache's shapes follow from it alone.

    vision_window: seconds of vision (user blocks and their commentary turns) kept, current included.
    text_sink / text_window: the first / last tokens of older commentary kept (previous text counts).
    max_new_tokens: the most tokens generated per second.
    vision_tokens: the most merged vision tokens of one second (720 for 720p at 2 FPS, at most 768 at
        2 FPS under the reference's pixel budget). None lets `Streamer` size it to the first second.
    round_tokens: the most text tokens of one round besides its vision tokens and the query
        (user header with time stamp, vision markers, assistant header).
    prefix_tokens: room for the system block and the previous-text header and tail.
    query_tokens: room for the query of the first second.
    keep_query: pin the query in the sinks instead of dropping it with the first second.
    question_tokens: room in every round's user block for a viewer's question (`Streamer.ask`); 0 = no
        questions. The question is user text: it leaves with its second's user block.
    answer_tokens: room in every row for an answer (its answer prefix included) before the commentary; 0 =
        no questions. The answer is assistant content: it becomes older commentary like the words after it.
    text_round: commentary turns kept in place, the current one included (the original's `text_round`);
        older turns move to older text. None: the same as vision_window. A round's user block stays
        while its vision or its turn does.
    older_text: "original" (default) follows StreamingVLM exactly: a turn that leaves moves all its
        content but the token before <|im_end|> (normally " ...", else the 20th token or <|endoftext|>);
        older text keeps its first text_sink and last text_window - 1 tokens (the original cuts
        [start+4+sink, end-window-1]); the previous text is prefilled whole in the first second and
        cut at the start of the second one. "svlm": a turn moves all content but a trailing " ...";
        older text keeps text_sink + text_window tokens; the previous text is cut before the first
        prefill.
    pos_mode: "contiguous" renumbers positions from 0 every second; "native" keeps them growing.
    evict: False disables eviction (full attention); a full cache then raises CacheFull.
    kv_dtype: the K/V storage: None (the compute dtype), "float32", "bfloat16" or "int8" (per slot and head
        scales; dequantized when attended). Positions, order and the retention policy do not depend on it.
    """

    vision_window: int = 16
    text_sink: int = 512
    text_window: int = 512
    max_new_tokens: int = 20
    vision_tokens: int | None = 768
    round_tokens: int = 40
    prefix_tokens: int = 64
    query_tokens: int = 128
    keep_query: bool = False
    question_tokens: int = 0
    answer_tokens: int = 0
    text_round: int | None = None
    older_text: str = "original"
    pos_mode: str = "contiguous"
    evict: bool = True
    kv_dtype: str | None = None

    def __post_init__(self):
        checks = [
            (self.vision_window >= 1, f"vision_window must be >= 1 second, got {self.vision_window}"),
            (self.text_sink >= 0 and self.text_window >= 0,
             f"text_sink and text_window must be >= 0, got {self.text_sink} and {self.text_window}"),
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.vision_tokens is None or self.vision_tokens >= 1,
             f"vision_tokens must be >= 1 or None, got {self.vision_tokens}"),
            (self.round_tokens >= 8, f"round_tokens must be >= 8, got {self.round_tokens}"),
            (self.prefix_tokens >= 1 and self.query_tokens >= 0,
             f"prefix_tokens must be >= 1 and query_tokens >= 0, got {self.prefix_tokens} and {self.query_tokens}"),
            (self.question_tokens >= 0 and self.answer_tokens >= 0,
             f"question_tokens and answer_tokens must be >= 0, got {self.question_tokens} and {self.answer_tokens}"),
            (self.pos_mode in POS_MODES, f"pos_mode must be one of {POS_MODES}, got {self.pos_mode!r}"),
            (self.kv_dtype in KV_DTYPES, f"kv_dtype must be one of {KV_DTYPES}, got {self.kv_dtype!r}"),
            (self.text_round is None or self.text_round >= 1, f"text_round must be >= 1 or None, got {self.text_round}"),
            (self.older_text in OLDER_TEXT_RULES,
             f"older_text must be one of {OLDER_TEXT_RULES}, got {self.older_text!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"Invalid StreamConfig: {msg}.")

    @property
    def turns(self) -> int:
        """Commentary turns kept in place (text_round, or vision_window when it is None)."""
        return self.vision_window if self.text_round is None else self.text_round

    @property
    def older_tail(self) -> int:
        """Last tokens of older text kept: text_window, one fewer under the original's cut."""
        return max(self.text_window - 1, 0) if self.older_text == "original" else self.text_window

    def replace(self, **kw) -> "StreamConfig":
        """A copy with the given fields changed (validated again)."""
        return dataclasses.replace(self, **kw)

    @property
    def layout(self) -> "CacheLayout":
        """The slot layout these capacities give."""
        return CacheLayout.of(self)


@dataclasses.dataclass(frozen=True)
class CacheLayout:
    """Slot ranges of one stream (all static ints). See the module docstring for the picture."""

    prefix: int  # first slot of the prefix region (always 0)
    query: int
    sink: int
    rows: int
    ring: int
    size: int  # S, the number of slots
    row_len: int  # R
    num_rows: int  # V
    prompt_len: int  # slots of a row's user block + assistant header
    content: int  # offset of the content area inside a row
    tail: int  # offset of the <|im_end|>\n tail inside a row
    chunk: int  # T, tokens per prefill call: one second's tail + prompt (+ an answer prefix)
    content_len: int  # slots of a row's content area: answer + its "\n" (when answer_tokens) + commentary

    @classmethod
    def of(cls, s: StreamConfig) -> "CacheLayout":
        """The layout of StreamConfig `s`."""
        if s.vision_tokens is None:
            raise ValueError("StreamConfig.vision_tokens is None, so the layout is not known yet; pass the number "
                             "of vision tokens per second (Streamer sizes it from the first second).")
        prompt = s.round_tokens + s.vision_tokens + s.question_tokens
        content = (s.answer_tokens + 1 if s.answer_tokens else 0) + s.max_new_tokens  # answer, "\n", commentary
        row = prompt + content + 2
        query = s.prefix_tokens
        sink = query + s.query_tokens
        rows = sink + s.text_sink
        num_rows = max(s.vision_window, s.turns)  # a round's row lives while its vision or its turn does
        ring = rows + num_rows * row
        return cls(prefix=0, query=query, sink=sink, rows=rows, ring=ring, size=ring + s.text_window, row_len=row,
                   num_rows=num_rows, prompt_len=prompt, content=prompt, tail=prompt + content,
                   chunk=prompt + 2 + s.answer_tokens, content_len=content)

    def row_start(self, second: int) -> int:
        """First slot of the row that holds `second`."""
        return self.rows + (second % self.num_rows) * self.row_len


# ------------------------------------------------------------------------------------------ device
@flax.struct.dataclass
class StreamCache:
    """The device cache of B streams with S slots each.

    k, v: per layer [B, S, KV, hd], K un-rotated; order: [B, S] int32, index of the slot in logical
    order (-1 = empty); pos: [B, S, 3] float32, the (t, h, w) M-RoPE position; tokens: [B, S] int32 ids.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    order: jax.Array
    pos: jax.Array
    tokens: jax.Array


KV_DTYPES = (None, "float32", "bfloat16", "int8")


def init_cache(cfg: ModelConfig, scfg: StreamConfig, batch: int, dtype=None) -> StreamCache:
    """An empty cache for `batch` streams; K/V in `dtype`, else `scfg.kv_dtype`, else the compute dtype.

    int8 stores each layer's K and V as `text.QuantKV`: int8 values [B, S, KV, hd] with a float32 scale per
    slot and head [B, S, KV].
    """
    t, s = cfg.text, scfg.layout.size
    dt = jnp.dtype(dtype or scfg.kv_dtype or cfg.compute_dtype)
    shape = (batch, s, t.num_key_value_heads, t.head_dim)  # [B, S, KV, hd]

    def empty():
        if dt == jnp.int8:
            return QuantKV(jnp.zeros(shape, jnp.int8), jnp.zeros(shape[:-1], jnp.float32))
        return jnp.zeros(shape, dt)

    zeros = tuple(empty() for _ in range(t.num_hidden_layers))
    zeros_v = tuple(empty() for _ in range(t.num_hidden_layers))
    return StreamCache(k=zeros, v=zeros_v, order=jnp.full((batch, s), -1, jnp.int32),
                       pos=jnp.zeros((batch, s, 3), jnp.float32), tokens=jnp.full((batch, s), -1, jnp.int32))


def cache_bytes(cfg: ModelConfig, scfg: StreamConfig, batch: int = 1, dtype=None) -> int:
    """Bytes of the device cache for this config, computed from shapes alone (nothing is allocated)."""
    shapes = jax.eval_shape(lambda: init_cache(cfg, scfg, batch, dtype))
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(shapes)))


def tree_bytes(tree) -> int:
    """Bytes held by the array leaves of a pytree."""
    return int(sum(x.nbytes for x in jax.tree_util.tree_leaves(tree)))


# ------------------------------------------------------------------------------------------ host
@dataclasses.dataclass
class RoundPlan:
    """What the device does for one stream in one second.

    new_slots/new_tokens/new_vision: tokens to prefill in logical order ([n] each; vision index into the
    second's features, -1 for text); move_src/move_dst: K/V copies done before the prefill;
    base_slot/base_order/base_pos: slot, logical index and position of the first generated token.
    """

    new_slots: np.ndarray
    new_tokens: np.ndarray
    new_vision: np.ndarray
    move_src: np.ndarray
    move_dst: np.ndarray
    base_slot: int
    base_order: int
    base_pos: float


@dataclasses.dataclass
class _Row:
    second: int
    content_slots: list[int]
    content_ids: list[int]
    query_slots: list[int]
    user_text: list[int] = dataclasses.field(default_factory=list)  # slots of `Time=a-bs` (+ question)
    vision: list[int] = dataclasses.field(default_factory=list)  # slots <|vision_start|> .. <|vision_end|>
    header: list[int] = dataclasses.field(default_factory=list)  # slots of <|im_start|>assistant\n
    # Sampled but not yet cached: a capped turn's last token, a stop id kept in the turn (e.g. <|endoftext|>).
    pending: list[int] = dataclasses.field(default_factory=list)
    turn: bool = True  # the commentary turn is still in place
    n_content: int = 0  # the first n_content content ids (pending ones included) were generated; then a stop id


class HostStream:
    """Host bookkeeping of one stream: the slot table, the retention policy and position numbering.

    Arrays over the S slots: tok (id, -1 empty), key (logical key, -1 empty), head (key of the first slot
    of the slot's rotary unit: a whole vision block, or the token itself for text), rel [S, 3] (position
    offset inside the unit), ext (the unit's extent: 1 for text, max offset + 1 for vision), npos [S, 3]
    (native positions, fixed when written), vis (index inside its second's vision block, -1 for text).
    Nothing here grows with the stream's length.
    """

    def __init__(self, scfg: StreamConfig, *, im_end: int, newline: int, silence: Sequence[int],
                 spatial_merge_size: int, tokens_per_second: float):
        self.scfg, self.layout = scfg, scfg.layout
        self.im_end, self.newline, self.silence = int(im_end), int(newline), [int(i) for i in silence]
        self.merge, self.tps = spatial_merge_size, float(tokens_per_second)
        s = self.layout.size
        self.tok = np.full(s, -1, np.int32)
        self.key = np.full(s, -1, np.int64)
        self.head = np.full(s, -1, np.int64)
        self.rel = np.zeros((s, 3), np.float64)
        self.ext = np.ones(s, np.float64)
        self.npos = np.zeros((s, 3), np.float64)
        self.vis = np.full(s, -1, np.int32)
        self.rows: list[_Row | None] = [None] * self.layout.num_rows
        self.second = 0  # index of the next second
        self.n_older = 0  # older-commentary tokens so far (j of the next one)
        self.seq = 0  # next key of the rounds band
        self.cursor = 0.0  # native position of the next token
        self._new: list[int] = []  # slots written since the last plan, in logical order
        self._spill: list[int] = []  # slots lent to the previous text's middle during the first second
        self._started = False

    # ---------------------------------------------------------------- writes
    def _text(self, slot: int, tok: int, key) -> None:
        """Write one text token at the cursor: its own rotary unit of extent 1."""
        self.tok[slot], self.key[slot], self.head[slot] = tok, key, key
        self.rel[slot], self.ext[slot], self.vis[slot] = 0.0, 1.0, -1
        self.npos[slot] = self.cursor
        self._new.append(slot)
        self.cursor += 1

    def _clear(self, lo: int, hi: int) -> None:
        self.tok[lo:hi], self.key[lo:hi], self.vis[lo:hi] = -1, -1, -1

    def _older_slot(self, j: int) -> int | None:
        s, lay = self.scfg, self.layout
        if j < s.text_sink:
            return lay.sink + j
        if s.text_window:
            return lay.ring + (j - s.text_sink) % s.text_window
        return None

    def start(self, head: Sequence[int], previous: Sequence[int], tail: Sequence[int]) -> None:
        """Place the system block + previous-text header (`head`), older commentary given at the start
        (`previous`) and the block's `tail`. They are prefilled with the first second.

        Under older_text "original" the whole previous text is placed: its middle (beyond the first
        text_sink and last text_window - 1 tokens) borrows the rows of seconds 1.. and is dropped at the
        start of second 1, so the kept tokens keep the K/V computed in full context. Under "svlm" only
        the first text_sink and last text_window tokens are placed.
        """
        s, lay = self.scfg, self.layout
        if self._started:
            raise RuntimeError("HostStream.start was already called for this stream.")
        if len(head) + len(tail) > s.prefix_tokens:
            raise ValueError(f"The system prompt and previous-text header take {len(head) + len(tail)} tokens but "
                             f"StreamConfig.prefix_tokens is {s.prefix_tokens}; raise prefix_tokens or shorten "
                             f"the system prompt.")
        n = len(previous)
        keep_first = min(n, s.text_sink)
        keep_last = min(n - keep_first, s.older_tail)
        middle = range(keep_first, n - keep_last) if s.older_text == "original" else range(0)
        spare = (lay.num_rows - 1) * lay.row_len  # the rows second 0 leaves free
        if len(middle) > spare:
            raise ValueError(f"The previous text has {n} tokens; the first second holds at most "
                             f"{s.text_sink + s.older_tail + spare} of them (text_sink + text_window - 1 + the free "
                             f"vision rows); shorten it, raise vision_window, or use "
                             f"StreamConfig(older_text='svlm'), which keeps only its first and last tokens.")
        self._started = True
        for i, t in enumerate(head):
            self._text(self.layout.prefix + i, t, _key(_HEAD, i))
        self._spill = [lay.row_start(1) + k for k in range(len(middle))]
        # Older token j keeps its index in the whole previous text, so ring slots stay consistent.
        for j in range(n):
            if j < keep_first or j >= n - keep_last:
                self._text(self._older_slot(j), previous[j], _key(_OLDER, j))
            elif j in middle:
                self._text(self._spill[j - keep_first], previous[j], _key(_OLDER, j))
        self.n_older = n
        for i, t in enumerate(tail):
            self._text(self.layout.prefix + len(head) + i, t, _key(_TAIL, i))

    def _moved(self, row: _Row) -> tuple[list[int], list[int]]:
        """(slots, ids) of a leaving turn's content that become older text, per `older_text`."""
        ids, slots = list(row.content_ids), list(row.content_slots)
        if self.scfg.older_text == "original":
            # Everything but the token before <|im_end|>: a stop id still pending (never cached) is that
            # token when there is one; once cached it is the last of content_ids.
            return (slots, ids) if row.pending else (slots[:-1], ids[:-1])
        ids, slots = ids[:row.n_content], slots[:row.n_content]  # without a cached stop id
        n_sil = len(self.silence)
        if n_sil and ids[-n_sil:] == self.silence:
            ids, slots = ids[:-n_sil], slots[:-n_sil]
        return slots, ids

    def _retire_turn(self, second: int, moves: list[tuple[int, int]]) -> None:
        """Second `second`'s turn leaves: its content becomes older text; the turn (and, when the vision
        stays longer, the user text) is dropped."""
        row = self.rows[second % self.layout.num_rows]
        if row is None or row.second != second or not row.turn:
            return
        slots, ids = self._moved(row)
        for src, t in zip(slots, ids):
            j = self.n_older
            self.n_older += 1
            dst = self._older_slot(j)
            if dst is None:
                continue
            moves.append((src, dst))
            # Relabel: same token, same native position, new slot and logical key.
            self.tok[dst], self.key[dst], self.head[dst] = t, _key(_OLDER, j), _key(_OLDER, j)
            self.rel[dst], self.ext[dst], self.npos[dst], self.vis[dst] = 0.0, 1.0, self.npos[src], -1
        lo = self.layout.row_start(second)
        self._clear(lo + self.layout.content, lo + self.layout.row_len)
        for q in row.header + (row.user_text if self.scfg.vision_window > self.scfg.turns else []):
            self._clear(q, q + 1)
        row.turn = False

    def _drop_round(self, second: int) -> None:
        """Second `second` leaves entirely: its row is freed; its query is dropped or pinned."""
        r = second % self.layout.num_rows
        row = self.rows[r]
        if row is None or row.second != second:
            return
        lo = self.layout.row_start(second)
        self._clear(lo, lo + self.layout.row_len)
        for i, q in enumerate(row.query_slots):
            if self.scfg.keep_query:
                self.key[q] = self.head[q] = _key(_PINNED, i)
            else:
                self._clear(q, q + 1)
        self.rows[r] = None

    def _evict(self, t: int, moves: list[tuple[int, int]]) -> None:
        """The original's `process_past_kv` at the start of second t, in its order (ORIGINAL.md §The cache policy)."""
        s = self.scfg
        v, r = s.vision_window, s.turns
        if t >= r:
            self._retire_turn(t - r, moves)
        if r > v and t >= v:  # the vision leaves before the turn: drop just the vision block
            row = self.rows[(t - v) % self.layout.num_rows]
            if row is not None and row.second == t - v:
                for q in row.vision:
                    self._clear(q, q + 1)
        if t >= max(v, r):
            self._drop_round(t - max(v, r))
        if t > 0 and s.older_text == "original":
            for q in self._spill:  # the previous text's middle, kept for the first second only
                self._clear(q, q + 1)
            self._spill = []
            stale = self.n_older - s.text_window  # the ring holds text_window slots but keeps one fewer token
            if s.text_window and stale >= s.text_sink:
                q = self._older_slot(stale)
                if self.key[q] == _key(_OLDER, stale):
                    self._clear(q, q + 1)

    def plan(self, prompt: Sequence[int], vision_start: int, n_vision: int, grid_thw: Sequence[int],
             second_per_grid_t: float, query_span: tuple[int, int] = (0, 0),
             answer_prefix: Sequence[int] = ()) -> RoundPlan:
        """Advance to the next second: evict, place the previous turn's tail and this round's `prompt`.

        prompt: the round's ids (user block + assistant header, from `prompt.build_round`); its vision
        block is prompt[vision_start : vision_start + n_vision] with patch grid `grid_thw`; the query, if
        any, is prompt[query_span[0] : query_span[1]]. answer_prefix: ids that open the assistant content
        (a question's forced answer start); they are content, prefilled with the prompt.
        """
        s, lay = self.scfg, self.layout
        if not self._started:
            raise RuntimeError("HostStream.start must be called before the first plan.")
        t = self.second
        q0, q1 = query_span
        n_query = q1 - q0
        if n_query > s.query_tokens:
            raise ValueError(f"The query takes {n_query} tokens but StreamConfig.query_tokens is {s.query_tokens}; "
                             f"raise query_tokens or shorten the query.")
        if n_query and t != 0:
            raise ValueError("Only the first second carries the query; pass query_span=(0, 0) afterwards.")
        if n_vision > s.vision_tokens:
            raise ValueError(f"Second {t} has {n_vision} vision tokens but StreamConfig.vision_tokens is "
                             f"{s.vision_tokens}; raise vision_tokens or lower the frame resolution.")
        if len(answer_prefix) > s.answer_tokens:
            raise ValueError(f"The answer prefix takes {len(answer_prefix)} tokens but StreamConfig.answer_tokens is "
                             f"{s.answer_tokens}; raise answer_tokens or shorten the prefix.")
        if len(prompt) - n_query > lay.prompt_len:
            raise ValueError(f"Round {t} needs {len(prompt) - n_query - n_vision} text tokens besides vision and "
                             f"query but StreamConfig.round_tokens is {s.round_tokens}; raise round_tokens.")
        moves: list[tuple[int, int]] = []
        if not s.evict and t >= lay.num_rows:
            raise CacheFull(f"The cache holds {lay.num_rows} seconds and eviction is off; second {t} does not fit.")
        prev = self.rows[(t - 1) % lay.num_rows] if t > 0 else None
        prev = prev if prev is not None and prev.second == t - 1 else None
        pending = list(prev.pending) if prev is not None else []
        if s.evict:
            self._evict(t, moves)
        # The previous turn's pending token (its capped last token or stop id) and <|im_end|>\n, if that turn is
        # still in place: cached now, after the eviction, as the original's next prefill caches them.
        if t > 0:
            if prev is not None and prev.turn:
                base = lay.row_start(t - 1) + lay.content + len(prev.content_ids)
                for i, tok in enumerate(pending):
                    self._text(base + i, tok, _key(_ROUND, self.seq))
                    prev.content_slots.append(base + i)
                    prev.content_ids.append(tok)
                    self.seq += 1
                prev.pending = []
                base = lay.row_start(t - 1) + lay.tail
                for i, tok in enumerate((self.im_end, self.newline)):
                    self._text(base + i, tok, _key(_ROUND, self.seq))
                    self.seq += 1
            else:
                # A text_round of 1 retired that turn before its tail was cached; the original then drops
                # the "\n" that opens this round, as its kept ids end in one. Native positions count the
                # pending token and the tail as if written.
                self.cursor += len(pending) + 2
        row0 = lay.row_start(t)
        query_slots: list[int] = []
        slot, i = row0, 0
        rel = vision_block_positions(grid_thw, 0.0, spatial_merge_size=self.merge,
                                     second_per_grid_t=second_per_grid_t, tokens_per_second=self.tps,
                                     time_mode="float").T  # [n_vision, 3]
        if rel.shape[0] != n_vision:
            raise ValueError(f"grid_thw {tuple(grid_thw)} gives {rel.shape[0]} merged tokens, not {n_vision}.")
        # Spans the policy drops separately: the user text (after `<|im_start|>user\n`, up to
        # <|vision_start|>), the vision block with its markers, and the assistant header.
        first_nl = next((k for k, x in enumerate(prompt) if x == self.newline), 0)
        header_at = max(k for k, x in enumerate(prompt) if x == prompt[0])
        spans: dict[str, list[int]] = {"user_text": [], "vision": [], "header": []}

        def note(k: int, at: int) -> None:
            if first_nl < k < vision_start - 1:
                spans["user_text"].append(at)
            elif vision_start - 1 <= k <= vision_start + n_vision:
                spans["vision"].append(at)
            elif k >= header_at:
                spans["header"].append(at)

        while i < len(prompt):
            if i == vision_start and n_vision:
                # The whole block at once: one rotary unit starting at the cursor.
                sl = slice(slot, slot + n_vision)
                self.tok[sl] = prompt[i:i + n_vision]
                self.key[sl] = _key(_ROUND, self.seq + np.arange(n_vision))
                self.head[sl] = _key(_ROUND, self.seq)
                self.rel[sl], self.ext[sl] = rel, float(rel.max()) + 1.0
                self.npos[sl], self.vis[sl] = self.cursor + rel, np.arange(n_vision)
                self._new.extend(range(slot, slot + n_vision))
                spans["vision"].extend(range(slot, slot + n_vision))
                self.seq += n_vision
                self.cursor += float(rel.max()) + 1.0
                slot += n_vision
                i += n_vision
                continue
            if q0 <= i < q1:
                q = lay.query + (i - q0)
                query_slots.append(q)
                self._text(q, prompt[i], _key(_ROUND, self.seq))
            else:
                self._text(slot, prompt[i], _key(_ROUND, self.seq))
                note(i, slot)
                slot += 1
            self.seq += 1
            i += 1
        base = row0 + lay.content
        for i, tok in enumerate(answer_prefix):
            self._text(base + i, int(tok), _key(_ROUND, self.seq))
            self.seq += 1
        self.rows[t % lay.num_rows] = _Row(t, list(range(base, base + len(answer_prefix))),
                                           [int(x) for x in answer_prefix], query_slots, **spans)
        self.second = t + 1
        new = np.asarray(self._new, np.int64)
        self._new = []
        o = self._sorted_valid()
        base_pos = self.cursor if s.pos_mode == "native" else float(np.sum(self.ext[o[self.key[o] == self.head[o]]]))
        # A ring slot written twice in one eviction keeps the later token, so keep one move per target.
        last = dict((d, sv) for sv, d in moves)
        src = np.asarray(list(last.values()), np.int32)
        dst = np.asarray(list(last.keys()), np.int32)
        return RoundPlan(new_slots=new.astype(np.int32), new_tokens=self.tok[new], new_vision=self.vis[new],
                         move_src=src, move_dst=dst, base_slot=base + len(answer_prefix),
                         base_order=int(o.size), base_pos=float(base_pos))

    def commit(self, content: Sequence[int], stop: int | None = None, *, cached: int | None = None) -> None:
        """Record the content tokens generated for the latest second, after its answer prefix if it had one.

        cached: how many of them the decode loop wrote to the cache (default: all). The rest, the last
        token of a turn cut at max_new_tokens, was sampled but never fed to the model, as in the original,
        whose `generate` runs no step on its last token: it is cached with the next second's tokens, after
        that second's eviction. stop: the sampled token that ended the turn, if any. A stop other than
        <|im_end|> (e.g. <|endoftext|>) stays in the turn before the <|im_end|> the original appends, and is
        cached the same way.
        """
        lay = self.layout
        t = self.second - 1
        row = self.rows[t % lay.num_rows]
        content = [int(x) for x in content]
        cached = len(content) if cached is None else cached
        if not 0 <= cached <= len(content):
            raise ValueError(f"cached must be in [0, {len(content)}], got {cached}.")
        n0 = len(row.content_ids)  # the answer prefix, placed by plan
        pending = content[cached:] + ([] if stop is None or int(stop) == self.im_end else [int(stop)])
        if n0 + cached + len(pending) > lay.content_len:
            raise ValueError(f"{n0 + cached + len(pending)} content tokens (a stop id included) exceed the row's "
                             f"{lay.content_len} content slots.")
        base = lay.row_start(t) + lay.content + n0
        for i, tok in enumerate(content[:cached]):
            self._text(base + i, tok, _key(_ROUND, self.seq))
            self.seq += 1
        self._new = []
        row.content_slots += list(range(base, base + cached))
        row.content_ids += content[:cached]
        row.pending = pending
        row.n_content = n0 + len(content)

    # ---------------------------------------------------------------- reads
    def _sorted_valid(self) -> np.ndarray:
        idx = np.flatnonzero(self.key >= 0)
        return idx[np.argsort(self.key[idx], kind="stable")]

    def positions(self, o: np.ndarray | None = None) -> np.ndarray:
        """[S, 3] float64 positions of every slot (zeros where empty), per `pos_mode`.

        o: the valid slots in logical order, if already computed.
        """
        if self.scfg.pos_mode == "native":
            return np.where((self.key >= 0)[:, None], self.npos, 0.0)
        o = self._sorted_valid() if o is None else o
        is_head = self.key[o] == self.head[o]
        ext = self.ext[o[is_head]]
        starts = np.cumsum(ext) - ext  # contiguous: each unit starts where the previous one ended
        unit = np.cumsum(is_head) - 1
        pos = np.zeros((self.layout.size, 3))
        pos[o] = starts[unit][:, None] + self.rel[o]
        return pos

    def tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Device metadata: order [S] int32 (-1 empty), pos [S, 3] float32, tokens [S] int32."""
        o = self._sorted_valid()
        order = np.full(self.layout.size, -1, np.int32)
        order[o] = np.arange(o.size, dtype=np.int32)
        return order, self.positions(o).astype(np.float32), self.tok.copy()

    def retained(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The retained sequence in logical order: (token ids [N], positions [N, 3], slots [N])."""
        o = self._sorted_valid()
        return self.tok[o], self.positions(o)[o], o

    def nbytes(self) -> int:
        """Bytes of the host bookkeeping (constant for a stream's life)."""
        return sum(a.nbytes for a in (self.tok, self.key, self.head, self.rel, self.ext, self.npos, self.vis))

    def grow(self, scfg: StreamConfig) -> None:
        """Switch to a config with more vision rows and eviction off (full attention); slots keep their index."""
        old = self.layout
        new = scfg.layout
        if (scfg.evict or new.rows != old.rows or new.row_len != old.row_len or new.num_rows < old.num_rows
                or new.size - new.ring != old.size - old.ring or old.size != old.ring):
            raise ValueError("HostStream.grow only adds vision rows to a cache without eviction or text ring.")
        pad = new.size - old.size
        self.tok = np.concatenate([self.tok, np.full(pad, -1, np.int32)])
        self.key = np.concatenate([self.key, np.full(pad, -1, np.int64)])
        self.head = np.concatenate([self.head, np.full(pad, -1, np.int64)])
        self.rel = np.concatenate([self.rel, np.zeros((pad, 3))])
        self.ext = np.concatenate([self.ext, np.ones(pad)])
        self.npos = np.concatenate([self.npos, np.zeros((pad, 3))])
        self.vis = np.concatenate([self.vis, np.full(pad, -1, np.int32)])
        self.rows = self.rows + [None] * (new.num_rows - old.num_rows)
        self.scfg, self.layout = scfg, new
