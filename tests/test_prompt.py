import pytest

from svlm_jax import ModelConfig
from svlm_jax.prompt import DEFAULT_QUERY, answer_text, build_prefix, build_round, truncate_middle
from svlm_jax.tokenizer import ChatTokenizer, word_level_tokenizer

CFG = ModelConfig.tiny()


@pytest.fixture(scope="module")
def tok():
    return ChatTokenizer.from_tokenizer(word_level_tokenizer(["red", "ball", "enters", "bounces", "match"], CFG))


def test_template_text(tok):
    prefix = build_prefix(tok, tok.encode(" red ball"))
    rnd = build_round(tok, 12, 13, 2, query=DEFAULT_QUERY, answer=answer_text(["red", "ball"]))
    text = tok.tokenizer.decode(prefix.ids + rnd.ids, skip_special_tokens=False)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>previous text\n red ball<|im_end|>\n"
                    "<|im_start|>user\nTime=12.0-13.0s<|vision_start|><|video_pad|><|video_pad|><|vision_end|>"
                    "Commentate on this match<|im_end|>\n<|im_start|>assistant\n red ball ...<|im_end|>\n")
    assert tok.decode(prefix.ids[prefix.prev_start:prefix.prev_end]) == " red ball"


def test_round_layout_and_labels(tok):
    rnd = build_round(tok, 0, 1, 3, answer=answer_text([]))
    assert rnd.prompt[rnd.vision_start:rnd.vision_start + 3] == [tok.video_pad] * 3
    assert rnd.prompt[rnd.vision_start - 1] == tok.vision_start
    labelled = [i for i, m in zip(rnd.ids, rnd.label_mask) if m]
    assert tok.decode(labelled) == " ..." and labelled[-1] == tok.im_end
    assert rnd.ids[-1] == tok.encode("\n")[0] and not rnd.label_mask[-1]
    assert build_round(tok, 0, 1, 3).answer == []


def test_truncate_middle():
    assert truncate_middle(range(10), 3, 2) == [0, 1, 2, 8, 9]
    assert truncate_middle(range(5), 3, 2) == [0, 1, 2, 3, 4]
    assert truncate_middle(range(10), 3, 0) == [0, 1, 2]


def test_missing_special_token_is_one_clear_error(tmp_path):
    from tokenizers import Tokenizer, models
    bare = Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>"))
    bare.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="lacks the special token <\\|endoftext\\|>"):
        ChatTokenizer.from_dir(tmp_path)


def test_tokenizer_must_match_model(tok):
    tok.check_model(CFG)
    with pytest.raises(ValueError, match="does not belong to this checkpoint"):
        tok.check_model(ModelConfig.tiny(vocab_size=2048))


def test_templates_are_named_choices(tok):
    from svlm_jax.prompt import INFERENCE, TRAINING, template

    assert template("training") is TRAINING and template(INFERENCE) is INFERENCE
    with pytest.raises(ValueError, match="Unknown template"):
        template("chat")
    rnd = build_round(tok, 3, 4, 1, index=1, tmpl="training", query="red ball",
                      answer=answer_text(["red"], tmpl="training"))
    text = tok.tokenizer.decode(rnd.ids, skip_special_tokens=False)
    assert text == ("<|im_start|>user\nTime=3.0-4.0s red ball<|vision_start|><|video_pad|><|vision_end|><|im_end|>\n"
                    "<|im_start|>assistant\n\n red ...<|im_end|>\n")
    assert tok.decode([i for i, m in zip(rnd.ids, rnd.label_mask) if m]) == "\n red ..."  # from im_start + 3
    with pytest.raises(ValueError, match="as text"):
        build_round(tok, 3, 4, 1, tmpl="training", answer=[1, 2])
