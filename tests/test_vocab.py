import json
import random

import pytest

from converters import qwen_tokenizer as cli
from svlm_jax.tokenizer import ChatTokenizer
from svlm_jax.vocab import FIRST_SPECIAL_ID, QWEN25VL_ADDED, QWEN2_PATTERN, default_tiktoken_path, load_ranks

# The original's TOKEN_IDS (streaming_vlm/utils/get_qwen_range.py) and ids its templates use
# (docs/ORIGINAL.md §Token ids).
IDS = {"user": [872], "assistant": [77091], "\n": [198], "\n\n": [271], " ...": [2503], " ": [220],
       "Hello": [9707], ":\n": [510], "previous text": [19702, 1467], "Time": [1462]}
SPECIAL_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
               "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|video_pad|>": 151656}


def test_fidelity_ids(qwen_tok):
    for text, ids in IDS.items():
        assert qwen_tok.encode(text) == ids, text
    for s, i in SPECIAL_IDS.items():
        assert qwen_tok.tokenizer.token_to_id(s) == i
        assert qwen_tok.tokenizer.encode(f"a{s}b", add_special_tokens=False).ids[1] == i
    assert (qwen_tok.im_start, qwen_tok.im_end, qwen_tok.video_pad) == (151644, 151645, 151656)
    assert qwen_tok.vocab_size == FIRST_SPECIAL_ID + len(QWEN25VL_ADDED)
    # The header "\n" and the content's leading "\n" merge: the original's training header is 77091 271.
    assert qwen_tok.encode("\n\n Curry brings it up ...")[0] == 271


def test_matches_tiktoken_reference(qwen_tok):
    """Same ids as tiktoken's own BPE over the same ranks and split regex, on mixed text (NFC input)."""
    import unicodedata

    import tiktoken  # a dependency of qwen-tokenizer
    enc = tiktoken.Encoding("qwen", pat_str=QWEN2_PATTERN, mergeable_ranks=load_ranks(default_tiktoken_path()),
                            special_tokens={})
    rng = random.Random(0)
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,:;!?'\"-\n\t()") + list("éüßçñ漢字かなЖж😀…’")
    texts = ["Time=1000.0-1001.0s ", " Curry brings it up ... and he's FIRED it in!!\n\n", "3-pointer 2024-25",
             "I'll we've they'RE  spaced   out \r\n\r\n tabs\t\tend", "Golden State Warriors’ BEST PLAYS"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(300)]
    for t in texts:
        t = unicodedata.normalize("NFC", t)
        assert qwen_tok.encode(t) == enc.encode_ordinary(t), repr(t)
        assert qwen_tok.tokenizer.decode(qwen_tok.encode(t)) == t


def test_decode_keeps_tool_tags_drops_specials(qwen_tok):
    ids = qwen_tok.tokenizer.encode("<tool_call><|im_end|>x", add_special_tokens=False).ids
    assert qwen_tok.decode(ids) == "<tool_call>x"


def test_cli_writes_loadable_tokenizer_json(tmp_path, qwen_tok, capsys):
    assert cli.main([str(tmp_path)]) == 0
    tok = ChatTokenizer.from_dir(tmp_path)
    assert tok.encode(" Curry brings it up ...") == qwen_tok.encode(" Curry brings it up ...")
    assert json.load(open(tmp_path / "tokenizer.json"))["normalizer"]["type"] == "NFC"
    assert cli.main([str(tmp_path)]) == 2  # never writes over an existing file without --force
    assert "already exists" in capsys.readouterr().err
    assert cli.main([str(tmp_path), "--force"]) == 0
    assert cli.main([str(tmp_path / "missing" / "t.json")]) == 2


def test_bad_rank_file(tmp_path):
    f = tmp_path / "bad.tiktoken"
    f.write_text("IQ== 0\nnot base64!! x\n")
    with pytest.raises(ValueError, match="line 2"):
        ChatTokenizer.qwen25vl(f)
    with pytest.raises(FileNotFoundError, match="qwen-tokenizer"):
        ChatTokenizer.qwen25vl(tmp_path / "none.tiktoken")
