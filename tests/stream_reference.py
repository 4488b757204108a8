"""The retention policy written the slow, obvious way: from the whole history, the retained sequence.

Nothing here knows about slots, rings or keys. After second t the retained sequence is, in order:

    system block + previous-text header
    older commentary, truncated to its first text_sink and last text_window tokens, where older
        commentary = the previous text given at the start, then the content of every second that has
        left the vision window (its trailing " ..." dropped)
    <|im_end|>\\n closing the previous-text block
    the first second's query, if keep_query and that second has left the window
    for each second s in the window (the last vision_window seconds up to t):
        its user block + assistant header, its content, and <|im_end|>\\n unless s == t

Positions: "contiguous" numbers that sequence from 0 with the get_rope_index rule (rope.block_positions);
"native" gives every token the position it has in the full history, nothing ever evicted.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from svlm_jax.config import ModelConfig
from svlm_jax.prompt import truncate_middle
from svlm_jax.rope import block_positions


@dataclasses.dataclass
class History:
    """Everything a stream has seen and said. rounds[s] = (prompt ids, grid_thw, second_per_grid_t,
    query_span); contents[s] = the content ids written for second s."""

    head: list[int]
    previous: list[int]
    tail: list[int]
    im_end: int
    newline: int
    silence: list[int]
    rounds: list = dataclasses.field(default_factory=list)
    contents: list = dataclasses.field(default_factory=list)


def _strip_silence(ids, silence):
    return ids[:-len(silence)] if silence and ids[-len(silence):] == silence else ids


def _tagged_round(h: History, s: int, closed: bool):
    prompt = [(("round", s, i), x) for i, x in enumerate(h.rounds[s][0])]
    content = [(("content", s, i), x) for i, x in enumerate(h.contents[s])]
    end = [(("end", s, 0), h.im_end), (("end", s, 1), h.newline)] if closed else []
    return prompt + content + end


def _full_history(h: History, t: int, sink: int, window: int):
    prev = truncate_middle(list(enumerate(h.previous)), sink, window)
    seq = [(("head", i), x) for i, x in enumerate(h.head)]
    seq += [(("older", -1, j), x) for j, x in prev]
    seq += [(("tail", i), x) for i, x in enumerate(h.tail)]
    for s in range(t + 1):
        seq += _tagged_round(h, s, s < t)
    return seq


def _positions(cfg: ModelConfig, seq, rounds):
    ids = np.asarray([x for _, x in seq], np.int64)
    pos, _ = block_positions(cfg, ids, video_grids=[r[1] for r in rounds],
                             second_per_grid_ts=[r[2] for r in rounds], time_mode="float")
    return pos.T  # [N, 3]


def retained(cfg: ModelConfig, h: History, t: int, *, vision_window: int, text_sink: int, text_window: int,
             keep_query: bool, pos_mode: str) -> tuple[list[int], np.ndarray]:
    """(ids, positions [N, 3]) retained after second t (its content written, its <|im_end|> pending)."""
    first = max(0, t - vision_window + 1)
    older = [(("older", -1, j), x) for j, x in enumerate(h.previous)]
    for e in range(first):
        older += [(("content", e, i), x) for i, x in enumerate(_strip_silence(h.contents[e], h.silence))]
    seq = [(("head", i), x) for i, x in enumerate(h.head)]
    seq += truncate_middle(older, text_sink, text_window)
    seq += [(("tail", i), x) for i, x in enumerate(h.tail)]
    q0, q1 = h.rounds[0][3]
    if keep_query and first > 0:
        seq += [(("round", 0, i), h.rounds[0][0][i]) for i in range(q0, q1)]
    for s in range(first, t + 1):
        seq += _tagged_round(h, s, s < t)
    ids = [x for _, x in seq]
    if pos_mode == "contiguous":
        return ids, _positions(cfg, seq, h.rounds[first:t + 1])
    full = _full_history(h, t, text_sink, text_window)
    table = dict(zip([tag for tag, _ in full], _positions(cfg, full, h.rounds[:t + 1])))
    return ids, np.stack([table[tag] for tag, _ in seq])


def older_length(h: History, t: int, vision_window: int) -> int:
    """Tokens of older commentary (before truncation) after second t."""
    first = max(0, t - vision_window + 1)
    return len(h.previous) + sum(len(_strip_silence(h.contents[e], h.silence)) for e in range(first))
