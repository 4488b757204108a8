"""Training samples equal the original's, token for token, with the real Qwen2.5-VL vocabulary.

The reference here renders the chat-template string the original's `LMMDataset`
(streaming_vlm/data/lmm_dataset.py) builds: the default system turn, a "previous text" turn, then per
1-s round a user turn `Time={s:.1f}-{e:.1f}s` (a space before any question from round 1 on) with the
round's video and an assistant turn `answer + "\n" + phrase + " ..."`, where the phrase takes the next
words in file order while the round's end >= their end time (their start is never read). It tokenizes
the whole string with the real vocabulary, truncates the previous-text block to its first 512 and last
512 tokens when it holds 1,024 or more, and labels from the third token after each assistant
<|im_start|> through its <|im_end|>. The code under test builds the same sample round by round.
"""
import json
import random

import numpy as np

from svlm_jax import ModelConfig
from svlm_jax.data.format import parse_record, record_to_json
from svlm_jax.data.sample import SampleConfig, build_sample, record_to_chunk, tokenize_chunk

N_VISION = 4  # vision tokens per round: one (1, 4, 4) grid after the 2x2 merge


def reference(tok, line, n_rounds, n_vision, sink=512, window=512):
    """The original's (ids, labels) for one JSONL line whose clip has 2 * n_rounds frames."""
    user, asst = line
    video, _ = user["content"]
    start = video["video_start"]
    stream = asst["content"][0]["text_stream"]
    qa = list(asst["content"][0].get("qa_stream", []))
    prev = ""
    for message in line:
        if message["role"] == "user":
            for el in message["content"]:
                if "previous" in el:
                    prev = el["previous"]
    text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    text += f"<|im_start|>previous text\n{prev}<|im_end|>\n"
    j = 0
    for k in range(n_rounds):
        s, e = start + 2 * k / 2.0, start + (2 * k + 2) / 2.0
        phrase = ""
        while j < len(stream) and e >= stream[j][1]:
            phrase += " " + stream[j][2].strip()
            j += 1
        question = answer = ""
        if qa and s < qa[0][1] and e >= qa[0][1]:
            question, answer = qa[0][2], qa[0][3]
            qa = qa[1:]
        time = f"Time={s:.1f}-{e:.1f}s" + (question if k == 0 else f" {question}")
        text += (f"<|im_start|>user\n{time}<|vision_start|>" + "<|video_pad|>" * n_vision
                 + "<|vision_end|><|im_end|>\n")
        text += f"<|im_start|>assistant\n{answer}\n{phrase} ...<|im_end|>\n"
    ids = tok.tokenizer.encode(text, add_special_tokens=False).ids
    starts = [i for i, x in enumerate(ids) if x == tok.im_start]
    ends = [i for i, x in enumerate(ids) if x == tok.im_end]
    b0, b1 = starts[1], ends[1] + 1  # previous text: <|im_start|> .. the "\n" after <|im_end|>
    if b0 + sink + window <= b1 + 1:
        ids = ids[:b0 + sink] + ids[b1 - window + 1:]
    labels = [-100] * len(ids)
    assistant = tok.encode("assistant")[0]
    for a, b in zip([i for i, x in enumerate(ids) if x == tok.im_start],
                    [i for i, x in enumerate(ids) if x == tok.im_end]):
        if ids[a + 1] == assistant:
            labels[a + 3:b + 1] = ids[a + 3:b + 1]
    return ids, labels


def _line(start, words, previous="", qa=(), extra_previous=None):
    line = record_to_json("game.mp4", start, start + 12.0, [], previous=previous, qa=qa)
    line[1]["content"][0]["text_stream"] = [list(w) for w in words]  # exact times, unrounded
    if extra_previous is not None:  # the video element has one too; the later text element's wins
        line[0]["content"][0]["previous"] = extra_previous
    return line


def _records():
    rng = random.Random(0)
    vocab = ["Curry", "brings", "it", "up", "three", "pointer", "Warriors", "defense", "rebound", "Green",
             "fast", "break", "layup", "timeout", "crowd", "is", "on", "its", "feet", "2024-25", "’s", "!!"]
    long_prev = " ".join(rng.choice(vocab) for _ in range(900))  # > 1,024 tokens
    s0 = 1000.0
    words = [
        (998.0, 999.5, "Good"), (999.5, 1000.4, "evening"),  # before video_start: round 0
        (1000.2, 1000.9, "Curry"), (1000.9, 1001.0, "brings"),  # ends exactly at s+1: round 0
        (1001.5, 1001.2, "it"),  # starts after it ends: kept
        (1001.3, 1001.8, " up "),  # stripped
        # round 2 is silent; round 3 is a turn of 20+ tokens
        *[(1003.0 + i * 0.04, 1003.05 + i * 0.04, w) for i, w in enumerate(
            "the Warriors’ defense forces a 2024-25 turnover , Green ’s fast break layup !! crowd on its feet"
            .split())],
        (1005.5, 1007.2, "timeout"),  # ends in round 7 ...
        (1004.1, 1004.5, "late"),  # ... and holds this one back until then
        (1009.0, 1009.4, "rebound"),
    ]
    qa = [[0, 1002.5, "Who has the ball?", "Curry"], [0, 1006.0, "Score?", "Tied"], [0, 1005.0, "Never", "x"]]
    yield "mixed", _line(s0, words, previous=long_prev, qa=qa)
    yield "short previous, whole-second start", _line(12.0, [(12.1, 12.6, "Hello"), (13.5, 13.9, "there")],
                                                        previous="Earlier:\n the game began", extra_previous="not this")
    yield "no previous", _line(7.3, [(7.0, 7.2, "tip"), (9.0, 9.5, "off")])


def test_samples_equal_the_originals_ids_and_labels(qwen_tok):
    cfg = SampleConfig()
    seen_truncation = False
    for name, line in _records():
        rec = parse_record(json.loads(json.dumps(line)), check_video=False)
        for n_rounds in (12, 3):
            ids, mask = tokenize_chunk(qwen_tok, record_to_chunk(rec, n_rounds), N_VISION, cfg)
            want_ids, want_labels = reference(qwen_tok, line, n_rounds, N_VISION)
            assert ids.tolist() == want_ids, name
            assert np.where(mask, ids, -100).tolist() == want_labels, name
            seen_truncation |= len(qwen_tok.encode(rec.previous)) > 1024
    assert seen_truncation


def test_the_cases_the_records_cover(qwen_tok):
    """The mixed record really holds each case, as the original reads it."""
    line = dict(_records())["mixed"]
    rec = parse_record(line, check_video=False)
    assert rec.reversed_words == 1
    chunk = record_to_chunk(rec, 12)
    assert chunk.rounds[0] == ("Good", "evening", "Curry", "brings")
    assert chunk.rounds[1] == ("it", "up") and chunk.rounds[2] == ()
    assert len(qwen_tok.encode("".join(f" {w}" for w in chunk.rounds[3]))) >= 20
    assert chunk.rounds[6] == () and chunk.rounds[7] == ("timeout", "late")  # held back by the out-of-order end time
    assert chunk.qa_of(2) == ("Who has the ball?", "Curry") and chunk.qa_of(5) == ("Score?", "Tied")
    assert all(chunk.qa_of(k) != ("Never", "x") for k in range(12))  # blocked behind an earlier qa
    ids, mask = tokenize_chunk(qwen_tok, chunk, N_VISION, SampleConfig())
    text = qwen_tok.tokenizer.decode(ids.tolist(), skip_special_tokens=False)
    assert "Time=1000.0-1001.0s<|vision_start|>" in text
    assert "Time=1001.0-1002.0s <|vision_start|>" in text
    assert "Time=1002.0-1003.0s Who has the ball?<|vision_start|>" in text
    assert "<|im_start|>assistant\nCurry\n ...<|im_end|>" in text
    # header newline merged: assistant 271; a silent round is 271 2503 <|im_end|>
    seq = ids.tolist()
    assert any(seq[i:i + 6] == [151644, 77091, 271, 2503, 151645, 198] for i in range(len(seq)))
    # previous text: 4 header + 508 content ... 510 content + <|im_end|> + "\n"
    b0 = seq.index(151644, 1)
    b1 = seq.index(151645, b0) + 1
    assert b1 - b0 + 1 == 1024 and seq[b0:b0 + 4] == [151644, 19702, 1467, 198]
    assert seq[b1 - 1:b1 + 1] == [151645, 198]


def test_build_sample_reads_rounds_from_the_frames(qwen_tok):
    """A Record is used whole: its rounds are as many as its frames allow; positions see Qwen's ids."""
    line = dict(_records())["short previous, whole-second start"]
    rec = parse_record(line, check_video=False)
    rng = np.random.default_rng(0)
    px = rng.standard_normal((5 * 16, 1176)).astype(np.float32)
    cfg7b = ModelConfig.preset("7b")
    s = build_sample(rec, qwen_tok, cfg7b, SampleConfig(), vision=(px, np.array([[1, 4, 4]])))
    want_ids, want_labels = reference(qwen_tok, line, 5, N_VISION)
    assert s["input_ids"].tolist() == want_ids
    assert np.where(s["label_mask"], s["input_ids"], -100).tolist() == want_labels
    assert s["grids"].shape == (5, 3) and s["positions"].shape == (3, len(want_ids))


def test_inference_template_is_an_option(qwen_tok):
    """template="inference" trains on what the model sees when streaming: 198 header, no trailing space."""
    rec = parse_record(_line(12.0, [(12.1, 12.6, "Hello"), (13.5, 13.9, "there")]), check_video=False)
    ids, mask = tokenize_chunk(qwen_tok, record_to_chunk(rec, 3), N_VISION, SampleConfig(template="inference"))
    text = qwen_tok.tokenizer.decode(ids.tolist(), skip_special_tokens=False)
    assert "<|im_start|>assistant\n Hello ...<|im_end|>" in text
    assert "Time=13.0-14.0s<|vision_start|>" in text and "s <|vision_start|>" not in text
    labelled = qwen_tok.tokenizer.decode(ids[mask].tolist(), skip_special_tokens=False)
    assert labelled == " Hello ...<|im_end|> there ...<|im_end|> ...<|im_end|>"


def _word_time_lines():
    """Lines the original trains on although their word times look wrong: it reads only each word's end."""
    yield "negative and reversed starts", _line(20.0, [(-3.0, 20.4, "Curry"), (20.9, 20.5, "brings"),
                                                       (-0.5, 21.6, "it"), (22.8, 21.9, "up")])
    yield "starts that are not numbers", _line(20.0, [(None, 20.4, "Curry"), ("soon", 21.2, "brings"),
                                                      ({}, 23.5, "it")])
    yield "words before video_start", _line(50.0, [(10.0, 11.0, "Good"), (48.0, 49.9, "evening"),
                                                   (49.0, 50.7, "Curry"), (51.2, 51.9, "up")])
    yield "negative ends", _line(0.0, [(-2.0, -1.5, "tip"), (-1.0, -0.2, "off"), (0.3, 0.8, "Curry")])
    yield "negative video_start", _line(-1.5, [(-1.4, -1.0, "tip"), (-0.2, 0.4, "off"), (1.0, 1.2, "Curry")])
    yield "no words", _line(5.0, [])


def test_word_times_the_original_accepts_are_read_as_it_reads_them(qwen_tok, tmp_path):
    """Negative starts, starts after ends or not numbers, words before video_start, negative ends, a negative
    video_start and a line without words: the reader keeps every one (counting the reversed starts only),
    and each sample equals the original's."""
    from svlm_jax.data.format import read_jsonl

    lines = dict(_word_time_lines())
    path = tmp_path / "odd_times.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines.values()))
    records, report = read_jsonl(path, check_video=False)
    assert report.kept == len(lines) and not report.skipped
    assert report.reversed_words == 2 and "2 words start after they end" in report.summary()
    rng, cfg7b = np.random.default_rng(1), ModelConfig.preset("7b")
    for (name, line), rec in zip(lines.items(), records):
        for n_rounds in (4, 2):
            want_ids, want_labels = reference(qwen_tok, line, n_rounds, N_VISION)
            px = rng.standard_normal((n_rounds * 16, 1176)).astype(np.float32)
            s = build_sample(rec, qwen_tok, cfg7b, SampleConfig(), vision=(px, np.array([[1, 4, 4]])))
            assert s["input_ids"].tolist() == want_ids, name
            assert np.where(s["label_mask"], s["input_ids"], -100).tolist() == want_labels, name
    chunk = record_to_chunk(records[0], 4)
    assert chunk.rounds == (("Curry", "brings"), ("it", "up"), (), ())
    assert record_to_chunk(records[2], 2).rounds == (("Good", "evening", "Curry"), ("up",))
    assert record_to_chunk(records[3], 1).rounds == (("tip", "off", "Curry"),)
    assert record_to_chunk(records[5], 2).rounds == ((), ())
