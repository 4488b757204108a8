"""The original's streaming policy written the slow, obvious way: one id list, edited as StreamingVLM edits it.

Written from fidelity.md §b and §d (mit-han-lab/streaming-vlm, `inference.py`: `process_past_kv` and the
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
when the stop was another id or the 20-token cap).

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
