"""Judge backends for pairwise A/B questions: any OpenAI-compatible chat endpoint, or a local checkpoint.

Both take chat messages and return the reply text; the benchmark's parser turns it into a vote.
  OpenAIJudge  `openai:MODEL`: the `openai` client against a base URL, temperature 0, a per-request timeout,
               retries with exponential backoff on connection errors, timeouts, 429s, 5xx and unparsable
               replies. A 400 is retried once without temperature (the original's fallback; GPT-5 rejects
               temperature 0). Concurrency is the caller's (one client is thread-safe).
  LocalJudge   `local:CKPT`: an svlm-jax checkpoint reads the same chat and the reply is whichever allowed
               answer ("A"/"B", or LiveSports' two sentences) has the higher log-probability after the
               assistant header. Deterministic and offline.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Sequence

import jax
import numpy as np

from svlm_jax.errors import ConfigError

DEFAULT_SYSTEM = "You are a helpful assistant."  # what Qwen's chat template inserts when there is no system turn


class JudgeError(RuntimeError):
    """A question the judge could not answer (after its retries); the run counts it and goes on."""


def parse_judge(spec: str, *, base_url: str | None = None, api_key: str | None = None, timeout: float = 60.0,
                retries: int = 4, backoff: float = 1.0, dtype: str | None = None):
    """A judge from its command-line spec: `openai:MODEL` or `local:CKPT`."""
    kind, _, name = spec.partition(":")
    if kind == "openai" and name:
        return OpenAIJudge(name, base_url=base_url, api_key=api_key, timeout=timeout, retries=retries,
                           backoff=backoff)
    if kind == "local" and name:
        return LocalJudge(name, dtype=dtype)
    raise ConfigError(f"--judge {spec!r} is not openai:MODEL or local:CKPT; e.g. --judge openai:gpt-5 or "
                      f"--judge local:/ckpts/judge.")


class OpenAIJudge:
    """Chat completions from an OpenAI-compatible endpoint.

    base_url / api_key default to $OPENAI_BASE_URL (or $OPENAI_API_BASE) and $OPENAI_API_KEY (or $OPENAI_KEY,
    the original's name). timeout: seconds per request; retries: extra attempts after the first; backoff:
    seconds before the first retry, doubled each time. seed is sent when given (LiveSports uses 42).
    """

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, retries: int = 4, backoff: float = 1.0, temperature: float | None = 0.0):
        import openai

        self.model, self.retries, self.backoff, self.temperature = model, retries, backoff, temperature
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_BASE")
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_KEY")
        if not api_key:
            raise ConfigError("No API key for the judge: pass --api-key or set OPENAI_API_KEY (any non-empty value "
                              "for a local server that ignores it).")
        self._openai = openai
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)
        self._no_temperature = False
        self.id = f"openai:{model}"

    def ask(self, messages: list[dict], choices: Sequence[str] | None = None, *, seed: int | None = None) -> str:
        """The reply text to `messages` (choices are the local judge's; ignored here). Raises JudgeError when
        every attempt failed; the error names the last cause.

        A 400 while sending a temperature is retried at once without it (the original's fallback, not counted
        as a retry); once that works, later questions go without temperature straight away.
        """
        oa = self._openai
        last, attempt, drop = None, 0, self._no_temperature
        while attempt <= self.retries:
            temperature = None if drop else self.temperature
            kw = {} if temperature is None else {"temperature": temperature}
            if seed is not None:
                kw["seed"] = seed
            try:
                resp = self.client.chat.completions.create(model=self.model, messages=messages, **kw)
                content = resp.choices[0].message.content
                if content is not None and not isinstance(content, str):
                    raise TypeError(f"message content is a {type(content).__name__}")
                if drop and self.temperature is not None:
                    self._no_temperature = True  # the endpoint takes no temperature: skip the 400 next time
                return content or ""
            except oa.BadRequestError as e:
                if temperature is None:
                    raise JudgeError(f"the endpoint rejected the request: {_brief(e)}") from None
                drop, last = True, e
                continue
            except oa.APIStatusError as e:
                if e.status_code not in (408, 409, 429) and e.status_code < 500:
                    raise JudgeError(f"the endpoint refused the request: {_brief(e)}") from None
                last = e
            except (oa.APIConnectionError, oa.APIResponseValidationError) as e:  # timeouts are connection errors
                last = e
            except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:  # a 200 we cannot read
                last = e
            attempt += 1
            if attempt <= self.retries:
                time.sleep(self.backoff * 2 ** (attempt - 1))
        raise JudgeError(f"no usable reply after {self.retries + 1} attempts; last: {_brief(last)}")


def _brief(e) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}"


class LocalJudge:
    """An svlm-jax checkpoint as judge: the reply is the allowed answer with the highest log-probability.

    The chat is rendered with Qwen2.5's template (the default system turn when there is none), followed by
    `<|im_start|>assistant\\n`; each answer's log-probability is the sum over its tokens. Ties go to the first
    answer. Inputs are padded to multiples of `pad_to` tokens so few lengths compile.
    """

    def __init__(self, ckpt: str, *, dtype: str | None = None, attn_chunk: int = 1024, pad_to: int = 256):
        import svlm_jax
        from svlm_jax.tokenizer import ChatTokenizer

        self.tok = ChatTokenizer.from_dir(ckpt)
        self.cfg, self.params = svlm_jax.load(ckpt, dtype)
        self.tok.check_model(self.cfg)
        self.attn_chunk, self.pad_to = attn_chunk, pad_to
        self.id = f"local:{os.path.abspath(ckpt)}"
        self.serial = True  # one accelerator: questions go one at a time

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of the chat up to and including the assistant header."""
        t, nl = self.tok, self.tok.encode("\n")
        if not messages or messages[0]["role"] != "system":
            messages = [{"role": "system", "content": DEFAULT_SYSTEM}] + list(messages)
        ids: list[int] = []
        for m in messages:
            ids += [t.im_start] + t.encode(m["role"]) + nl + t.encode(m["content"]) + [t.im_end] + nl
        return ids + [t.im_start] + t.encode("assistant") + nl

    def logprobs(self, messages: list[dict], choices: Sequence[str]) -> np.ndarray:
        """Summed log-probability of each answer in `choices` after the chat -> [len(choices)] float32."""
        prompt = self.prompt_ids(messages)
        answers = [self.tok.encode(c) for c in choices]
        if any(not a for a in answers):
            raise ValueError(f"Every answer must encode to at least one token; got {list(choices)!r}.")
        n = len(prompt) + max(map(len, answers))
        t = -(-n // self.pad_to) * self.pad_to
        k = -(-max(map(len, answers)) // 8) * 8  # answer slots in multiples of 8: one compile for most answers
        ids = np.zeros((len(choices), t), np.int32)
        mask = np.zeros((len(choices), t), np.int32)
        at = np.zeros((len(choices), k), np.int32)
        targets = np.full((len(choices), k), -1, np.int32)
        for i, a in enumerate(answers):
            row = prompt + a
            ids[i, :len(row)], mask[i, :len(row)] = row, 1
            at[i, :len(a)] = len(prompt) - 1 + np.arange(len(a))  # the position that predicts answer token j
            targets[i, :len(a)] = a
        out = _answer_logprobs(self.cfg, self.params, ids, mask, at, targets, attn_chunk=min(self.attn_chunk, t))
        return np.asarray(out)

    def ask(self, messages: list[dict], choices: Sequence[str] = ("A", "B"), *, seed: int | None = None) -> str:
        """The answer of `choices` with the highest log-probability (the first on a tie)."""
        return choices[int(np.argmax(self.logprobs(messages, choices)))]


@functools.partial(jax.jit, static_argnames=("cfg", "attn_chunk"))
def _answer_logprobs(cfg, params, ids, mask, at, targets, attn_chunk):
    """Text-only causal forward: ids/mask [C, T]; at/targets [C, K] (target -1 = none) -> summed log p [C]."""
    import flax.linen as nn
    import jax.numpy as jnp

    from svlm_jax.model import Qwen25VL, causal_mask

    c, t = ids.shape

    def fn(m):
        pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.float32)[None, None], (3, c, t))  # text-only M-RoPE
        h, _ = m.decode(m.embed(ids), pos, causal_mask(mask))  # [C, T, D]
        hs = jnp.take_along_axis(h, at[..., None], axis=1)  # [C, K, D]
        lp = jax.nn.log_softmax(m.logits(hs), axis=-1)  # [C, K, V]
        got = jnp.take_along_axis(lp, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
        return jnp.sum(jnp.where(targets >= 0, got, 0.0), axis=-1)

    return nn.apply(fn, Qwen25VL(cfg, attn_q_chunk=attn_chunk))({"params": params})
