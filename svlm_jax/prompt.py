"""The chat template of StreamingVLM and the one round builder that training and streaming share.

A stream is laid out as

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>previous text\\n{older commentary}<|im_end|>\\n
    then one round per second:
    <|im_start|>user\\nTime=12.0-13.0s<|vision_start|><|video_pad|>*N<|vision_end|>{query}<|im_end|>\\n
    <|im_start|>assistant\\n{ words} ...<|im_end|>\\n

A silent second's answer is " ...". The query appears in the first round only unless pinned.
Labels cover the answer content through <|im_end|> (not the trailing newline).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from svlm_jax.tokenizer import ChatTokenizer

DEFAULT_SYSTEM = "You are a helpful assistant."
DEFAULT_QUERY = "Commentate on this video"
SILENCE = " ..."


@dataclasses.dataclass(frozen=True)
class Prefix:
    """System block + previous-text block.

    ids: all tokens; prev_start/prev_end: the span of previous-text content inside ids (the block's
    header is ids[:prev_start], its `<|im_end|>\\n` tail is ids[prev_end:]).
    """

    ids: list[int]
    prev_start: int
    prev_end: int


@dataclasses.dataclass(frozen=True)
class Round:
    """One second. prompt = user block + assistant header; answer = content + <|im_end|> + newline.

    vision_start: index in `prompt` of the first vision pad; n_vision pads follow it.
    """

    prompt: list[int]
    vision_start: int
    n_vision: int
    answer: list[int]

    @property
    def ids(self) -> list[int]:
        return self.prompt + self.answer

    @property
    def label_mask(self) -> list[bool]:
        """True on answer content and its <|im_end|>; False on the prompt and the final newline."""
        n = len(self.answer)
        return [False] * len(self.prompt) + [i < n - 1 for i in range(n)]


def time_header(t0: float, t1: float) -> str:
    """The round's time stamp, absolute video seconds with one decimal."""
    return f"Time={t0:.1f}-{t1:.1f}s"


def answer_text(words: Sequence[str]) -> str:
    """Commentary words of one second -> assistant content: ' w1 w2 ...' or ' ...' when silent."""
    return "".join(f" {w}" for w in words) + SILENCE


def build_prefix(tok: ChatTokenizer, previous: Sequence[int] = (), *, system: str = DEFAULT_SYSTEM) -> Prefix:
    """System and previous-text blocks; `previous` is already-tokenized older commentary."""
    nl = tok.encode("\n")
    ids = [tok.im_start] + tok.encode("system") + nl + tok.encode(system) + [tok.im_end] + nl
    ids += [tok.im_start] + tok.encode("previous text") + nl
    start = len(ids)
    ids += list(previous)
    end = len(ids)
    ids += [tok.im_end] + nl
    return Prefix(ids, start, end)


def question_text(question: str, first_round: bool) -> str:
    """What a viewer's question appends to the round's time stamp, as the original's qa_stream training
    template writes it (fidelity.md §a): right after `Time=a-bs` in round 0, after a space in later rounds."""
    return question if first_round else " " + question


def build_round(tok: ChatTokenizer, t0: float, t1: float, n_vision: int, *, query: str | None = None,
                answer: str | Sequence[int] | None = None, question: str | None = None) -> Round:
    """One second's tokens. `answer` is text (e.g. from `answer_text`), ids, or None at inference.
    `question`: text appended to the time stamp (from `question_text`), tokenized with it as one string."""
    nl = tok.encode("\n")
    stamp = time_header(t0, t1) + (question or "")
    prompt = [tok.im_start] + tok.encode("user") + nl + tok.encode(stamp) + [tok.vision_start]
    vstart = len(prompt)
    prompt += [tok.video_pad] * n_vision + [tok.vision_end]
    prompt += (tok.encode(query) if query else []) + [tok.im_end] + nl
    prompt += [tok.im_start] + tok.encode("assistant") + nl
    if answer is None:
        ans = []
    else:
        content = tok.encode(answer) if isinstance(answer, str) else list(answer)
        ans = content + [tok.im_end] + nl
    return Round(prompt, vstart, n_vision, ans)


def truncate_middle(ids: Sequence[int], sink: int, window: int) -> list[int]:
    """Keep the first `sink` and last `window` tokens when ids is longer than both together."""
    ids = list(ids)
    if len(ids) <= sink + window:
        return ids
    return ids[:sink] + (ids[-window:] if window else [])
