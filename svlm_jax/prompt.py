"""The chat templates of StreamingVLM and the one round builder that training and streaming share.

A stream is laid out as

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>previous text\\n{older commentary}<|im_end|>\\n
    then one round per second:
    <|im_start|>user\\nTime=12.0-13.0s<|vision_start|><|video_pad|>*N<|vision_end|>{query}<|im_end|>\\n
    <|im_start|>assistant\\n{ words} ...<|im_end|>\\n

The original writes rounds in two ways (docs/ORIGINAL.md §Training and streaming differ), and both are kept here as
named `Template`s:

- `INFERENCE` (streaming): header `assistant` + 198, content ` w1 w2 ...`; the query follows the vision
  block in round 0 only; `Time=a-bs` never has a trailing space.
- `TRAINING` (the original's SFT samples, `lmm_dataset.py`): the content is `answer + "\\n" + phrase + " ..."`
  tokenized together with the header, so `assistant\\n\\n` becomes 77091 271; the user text is
  `Time=a-bs{question}` in round 0 and `Time=a-bs {question}` from round 1 (a lone trailing space, 220,
  when there is no question), and it comes before the vision block.

Each text run between two special tokens is tokenized as one string, as the original's processor
tokenizes the rendered template. A silent second's phrase is empty. Labels cover the answer content
through <|im_end|> (from `im_start + 3`, never the trailing newline).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from svlm_jax.tokenizer import ChatTokenizer

DEFAULT_SYSTEM = "You are a helpful assistant."
DEFAULT_QUERY = "Commentate on this match"  # the original's (`inference.py`)
SILENCE = " ..."


@dataclasses.dataclass(frozen=True)
class Template:
    """How one round is written (see the module docstring).

    name: "training" or "inference". merge_header: the assistant header's newline and the content are
    tokenized as one string, with the content written `answer + "\\n" + phrase + " ..."`.
    space_after_time: rounds >= 1 write `Time=a-bs ` + question. question_in_time: a round's query goes
    right after the Time text (before the vision block) instead of after the vision block.
    """

    name: str
    merge_header: bool
    space_after_time: bool
    question_in_time: bool


TRAINING = Template("training", merge_header=True, space_after_time=True, question_in_time=True)
INFERENCE = Template("inference", merge_header=False, space_after_time=False, question_in_time=False)
TEMPLATES = {t.name: t for t in (TRAINING, INFERENCE)}


def template(name: str | Template) -> Template:
    """A Template by name ("training", "inference"), or the Template itself."""
    if isinstance(name, Template):
        return name
    if name not in TEMPLATES:
        raise ValueError(f"Unknown template {name!r}; use one of {sorted(TEMPLATES)}.")
    return TEMPLATES[name]


@dataclasses.dataclass(frozen=True)
class Prefix:
    """System block + previous-text block.

    ids: all tokens; prev_start/prev_end: the span of previous-text content inside ids (the block's
    header is ids[:prev_start], its `<|im_end|>\\n` tail is ids[prev_end:]).
    """

    ids: list[int]
    prev_start: int
    prev_end: int

    @property
    def block_start(self) -> int:
        """Index of the previous-text block's <|im_start|>."""
        return self.ids.index(self.ids[0], 1)


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


def answer_text(words: Sequence[str], *, tmpl: str | Template = INFERENCE, answer: str = "") -> str:
    """Commentary words of one second -> assistant content.

    INFERENCE: ' w1 w2 ...' (' ...' when silent). TRAINING: answer + '\\n' + ' w1 w2' + ' ...', the
    original's `answer + "\\n" + phrase + " ..."` with each word stripped.
    """
    phrase = "".join(f" {w.strip()}" for w in words)
    if template(tmpl).merge_header:
        return answer + "\n" + phrase + SILENCE
    return (answer + "\n" if answer else "") + phrase + SILENCE


def build_prefix(tok: ChatTokenizer, previous: Sequence[int] | str = (), *, system: str = DEFAULT_SYSTEM) -> Prefix:
    """System and previous-text blocks.

    previous: already-tokenized older commentary (ids), or text, which is tokenized together with the
    block's `previous text\\n` header as the original's processor does.
    """
    nl = tok.encode("\n")
    ids = [tok.im_start] + tok.encode("system\n" + system) + [tok.im_end] + nl + [tok.im_start]
    if isinstance(previous, str):
        head = tok.encode("previous text\n")
        seg = tok.encode("previous text\n" + previous)
        n_head = len(head) if seg[:len(head)] == head else len(head) - 1  # a leading newline merges
        ids += seg
        start = len(ids) - len(seg) + n_head
    else:
        ids += tok.encode("previous text") + nl
        start = len(ids)
        ids += list(previous)
    end = len(ids)
    ids += [tok.im_end] + nl
    return Prefix(ids, start, end)


def question_text(question: str, first_round: bool) -> str:
    """What a viewer's question appends to the round's time stamp, as the original's qa_stream training
    template writes it (`lmm_dataset.py`): right after `Time=a-bs` in round 0, after a space in later rounds."""
    return question if first_round else " " + question


def build_round(tok: ChatTokenizer, t0: float, t1: float, n_vision: int, *, query: str | None = None,
                answer: str | Sequence[int] | None = None, tmpl: str | Template = INFERENCE,
                index: int = 0, question: str | None = None) -> Round:
    """One second's tokens.

    answer: the assistant content as text (from `answer_text` with the same template), as ids
    (INFERENCE only), or None at inference. index: the round's position in its sample (TRAINING writes
    a space after the Time text from round 1 on). query: the user's text for this round (INFERENCE puts
    it after the vision block, TRAINING after the Time text). question: text appended to the time stamp
    (from `question_text`), tokenized with it as one string, in either template.
    """
    tp = template(tmpl)
    nl = tok.encode("\n")
    user = time_header(t0, t1)
    if tp.space_after_time and index > 0:
        user += " "
    if tp.question_in_time and query:
        user += query
    user += question or ""
    prompt = [tok.im_start] + tok.encode("user\n" + user) + [tok.vision_start]
    vstart = len(prompt)
    prompt += [tok.video_pad] * n_vision + [tok.vision_end]
    if not tp.question_in_time and query:
        prompt += tok.encode(query)
    prompt += [tok.im_end] + nl + [tok.im_start]
    if tp.merge_header:
        if answer is not None and not isinstance(answer, str):
            raise ValueError("The training template tokenizes the answer together with its header; pass it as text.")
        seg = tok.encode("assistant\n" + (answer if answer is not None else ""))
        # The header is `assistant` plus its newline, which may have merged with the content's (271).
        prompt += seg[:2]
        ans = seg[2:] + [tok.im_end] + nl if answer is not None else []
        return Round(prompt, vstart, n_vision, ans)
    prompt += tok.encode("assistant") + nl
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


def truncate_block(ids: Sequence[int], start: int, end: int, sink: int, window: int) -> list[int]:
    """The original's training truncation of the previous-text block (`lmm_dataset.py`, docs/ORIGINAL.md
    §Previous-text truncation in training).

    The block is ids[start : end + 1], from its <|im_start|> through the newline after its <|im_end|>, so
    its 4 header and 2 footer tokens count in the budgets. When it holds >= sink + window tokens, all but
    its first `sink` and last `window` are deleted. sink = window = 0 turns truncation off.
    """
    ids = list(ids)
    if (sink == 0 and window == 0) or end + 1 - start < sink + window:
        return ids
    return ids[:start + sink] + ids[end + 1 - window:]


def encode_previous(tok: ChatTokenizer, text: str) -> list[int]:
    """Previous text -> ids as the chat template tokenizes it: in one string with its `previous text\n`
    header, so byte-level BPE sees the same pre-token boundaries. Falls back to `text` alone when its
    start would merge with the header's newline (text that starts with a line break)."""
    head = "previous text\n"
    hid, ids = tok.encode(head), tok.encode(head + text)
    return ids[len(hid):] if ids[:len(hid)] == hid else tok.encode(text)
