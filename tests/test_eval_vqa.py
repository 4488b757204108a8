"""Video QA evaluation: readers on fixtures in each benchmark's released layout, the original's frame
sampling, offline option scoring on a model whose head is rigged so the answer is known, scores, resume
after a kill, and the command line."""
import functools
import json
import os

import numpy as np
import pytest

from svlm_jax import ModelConfig, forward
from svlm_jax.eval.vqa import frames as F
from svlm_jax.eval.vqa import protocols as P
from svlm_jax.eval.vqa import scoring
from svlm_jax.eval.vqa.offline import bucket, last_logits
from svlm_jax.eval.vqa.readers import json_array_records, read_bench
from svlm_jax.eval.vqa.results import PREDICTIONS, Predictions, finish
from svlm_jax.eval.vqa.run import prompt_for, run_offline
from svlm_jax.tokenizer import ChatTokenizer, word_level_tokenizer
from svlm_jax.video import write_mp4
from tests.model_fixtures import random_params

CFG = ModelConfig.tiny(tie_word_embeddings=False)
WORDS = ["A", "B", "C", "D", "E", "F", "Yes", "No", " A", " B", " Yes", "cat", "dog", "red", "sun", "ball", "jump",
         "What", "is", "written", "Question", "Options", "Answer", "Best", "option", "The", "answer", "is", "the"]


def frames_of(n, size=56, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size, size, 3), np.uint8)
    return [np.roll(base, 7 * i, axis=1) for i in range(n)]


def video(path, seconds=4, fps=2, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return write_mp4(path, frames_of(seconds * fps, seed=seed), fps)


# ------------------------------------------------------------------------------------------ fixtures
def write_ovo(root):
    """ovo_bench_new.json as released: MCQ records and forward-active records with test_info polls."""
    video(os.path.join(root, "src_videos", "a.mp4"), seconds=5)
    video(os.path.join(root, "src_videos", "b.mp4"), seconds=5, seed=1)
    video(os.path.join(root, "src_videos", "c.mp4"), seconds=2, seed=3)
    recs = [
        {"id": 0, "task": "OCR", "video": "src_videos/a.mp4", "realtime": 3.0, "question": "What is written?",
         "options": ["cat", "dog", "red", "sun"], "gt": 1},
        {"id": 1, "task": "EPM", "video": "src_videos/b.mp4", "realtime": 4.5, "question": "What is red?",
         "options": ["ball", "sun", "cat"], "gt": 0},
        {"id": 2, "task": "REC", "video": "src_videos/a.mp4", "activity": "jump",
         "test_info": [{"realtime": 2.0, "count": 1}, {"realtime": 4.0, "count": 2}]},
        {"id": 3, "task": "SSR", "video": "src_videos/b.mp4",
         "test_info": [{"realtime": 2.0, "step": "cut the bread", "type": 0},
                       {"realtime": 3.5, "step": "cut the bread", "type": 1}]},
        {"id": 4, "task": "CRR", "video": "src_videos/a.mp4", "question": "What color is the ball?", "ask_time": 1.0,
         "test_info": [{"realtime": 2.0, "type": 0}, {"realtime": 4.0, "type": 1}]},
        {"id": 5, "task": "OJR", "video": "src_videos/missing.mp4", "realtime": 1.0, "question": "Q?",
         "options": ["x", "y"], "gt": 0},
        {"id": 6, "task": "XYZ", "video": "src_videos/a.mp4", "realtime": 1.0},
        {"id": 7, "task": "ATR", "video": "c.mp4", "realtime": 2.0, "question": "Q?", "options": ["x", "y"], "gt": 1},
    ]
    with open(os.path.join(root, "ovo_bench_new.json"), "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(r, indent=2) for r in recs) + "\n]\n")
    return recs


def write_lvb(root):
    video(os.path.join(root, "videos", "v1.mp4"))
    recs = [
        {"video_id": "v1", "id": "q1", "video_path": "v1.mp4", "duration": 4.0, "question": "What is red?",
         "candidates": ["ball", "sun", "cat", "dog"], "correct_choice": 2, "duration_group": 15,
         "question_category": "S2E", "subtitle_path": "v1_en.json", "starting_timestamp_for_subtitles": 0},
        {"video_id": "v1", "id": "q2", "video_path": "v1.mp4", "duration": 4.0, "question": "Is it a cat?",
         "candidates": ["Yes", "No"], "correct_choice": 0, "duration_group": 15, "question_category": "E2O"},
        {"video_id": "v1", "id": "q3", "video_path": "v1.mp4", "question": "Broken?", "candidates": ["a"],
         "correct_choice": 3, "duration_group": 15, "question_category": "E2O"},
    ]
    with open(os.path.join(root, "lvb_val.json"), "w") as f:
        json.dump(recs, f, indent=1)
    return recs


def write_videomme(root):
    import pyarrow as pa
    import pyarrow.parquet as pq

    video(os.path.join(root, "data", "abc123.mp4"))
    rows = [
        dict(video_id="001", duration="short", domain="Knowledge", sub_category="Humanity", url="u",
             videoID="abc123", question_id="001-1", task_type="Counting Problem", question="How many cats?",
             options=["A. 1", "B. 2", "C. 3", "D. 4"], answer="B"),
        dict(video_id="001", duration="short", domain="Knowledge", sub_category="Humanity", url="u",
             videoID="abc123", question_id="001-2", task_type="OCR Problems", question="What is written?",
             options=["A. cat", "B. dog", "C. red", "D. sun"], answer="D"),
        dict(video_id="002", duration="long", domain="Sports", sub_category="Basketball", url="u",
             videoID="zzz999", question_id="002-1", task_type="Action Reasoning", question="Why?",
             options=["A. a", "B. b", "C. c", "D. d"], answer="A"),
        dict(video_id="003", duration="short", domain="Sports", sub_category="Basketball", url="u",
             videoID="abc123", question_id="003-1", task_type="Action Reasoning", question="Why?",
             options=["A. a", "B. b", "C. c"], answer="E"),
    ]
    os.makedirs(os.path.join(root, "videomme"))
    pq.write_table(pa.Table.from_pylist(rows), os.path.join(root, "videomme", "test-00000-of-00001.parquet"))
    return rows


def write_mvbench(root):
    os.makedirs(os.path.join(root, "json"))
    video(os.path.join(root, "video", "perception", "videos", "p1.mp4"), seconds=4, fps=4)
    count = [{"video": "p1.mp4", "question": "How many times does the ball jump?", "candidates": ["1", "2", "3"],
              "answer": "2"},
             {"video": "p1.mp4", "question": "What is red?", "candidates": ["ball", "sun"], "answer": "cat"}]
    folder = os.path.join(root, "video", "tvqa", "frames_fps3_hq", "clip1")
    os.makedirs(folder)
    from PIL import Image

    for i, fr in enumerate(frames_of(15, seed=2)):
        Image.fromarray(fr).save(os.path.join(folder, f"{i + 1:05d}.jpg"))
    episodic = [{"video": "clip1", "question": "What is written?", "candidates": ["cat", "dog", "sun", "red"],
                 "answer": "sun", "start": 1.0, "end": 4.0}]
    with open(os.path.join(root, "json", "action_count.json"), "w") as f:
        json.dump(count, f, indent=2)
    with open(os.path.join(root, "json", "episodic_reasoning.json"), "w") as f:
        json.dump(episodic, f, indent=2)


WRITERS = {"ovo": write_ovo, "lvb": write_lvb, "videomme": write_videomme, "mvbench": write_mvbench}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = {}
    for bench, write in WRITERS.items():
        root = str(tmp_path_factory.mktemp(bench))
        write(root)
        out[bench] = root
    return out


def make_tokenizer():
    """The word-level test tokenizer plus bare option words (it only builds space-prefixed words), so "A" and
    "\nA" end in the same token as in Qwen's vocabulary."""
    from tokenizers import AddedToken

    t = word_level_tokenizer(WORDS, CFG)
    t.add_tokens([AddedToken(w, single_word=True, normalized=False) for w in P.RESTRICTED_WORDS])
    return ChatTokenizer.from_tokenizer(t)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


# ------------------------------------------------------------------------------------------ readers
def test_ovo_reader(data):
    r = read_bench("ovo", data["ovo"])
    qs = {q.qid: q for q in r.questions}
    assert list(qs) == ["ovo/0", "ovo/1", "ovo/2/0", "ovo/2/1", "ovo/3/0", "ovo/3/1", "ovo/4/0", "ovo/4/1", "ovo/7"]
    assert qs["ovo/7"].video == os.path.join(data["ovo"], "src_videos", "c.mp4")  # found under src_videos/
    q = qs["ovo/0"]
    assert q.text == "What is written?\nA. cat\nB. dog\nC. red\nD. sun\nPlease select the correct answer."
    assert (q.answer, q.group, q.start, q.end, q.ask_at) == ("B", "realtime", 0.0, 3.0, 3.0)
    assert qs["ovo/1"].group == "backward" and qs["ovo/1"].answer == "A"
    rec = qs["ovo/2/1"]
    assert rec.answer == "2" and rec.end == 4.0 and rec.group == "forward"
    assert rec.text.startswith("You're watching a video in which people may perform a certaintype of action")
    assert "How many times did they jump?\n\nYour response type should be INT, for example, 0/1/2/3.." in rec.text
    assert [qs["ovo/3/0"].answer, qs["ovo/3/1"].answer] == ["No", "Yes"]
    assert "\n\ncut the bread\n\n" in qs["ovo/3/0"].text
    crr = qs["ovo/4/0"]
    assert (crr.start, crr.end, crr.answer) == (1.0, 2.0, "No")  # CRR clips are [ask_time, realtime]
    assert "\n\nWhat color is the ball?\n\n" in crr.text
    assert r.missing == [("ovo/5", os.path.join(data["ovo"], "src_videos/missing.mp4"))]
    # The bad record is the 7th object; the file writes each with indent=2, so find its line by hand.
    text = open(os.path.join(data["ovo"], "ovo_bench_new.json")).read().splitlines()
    line = next(i for i, s in enumerate(text, 1) if '"id": 6' in s) - 1
    assert len(r.malformed) == 1 and f"ovo_bench_new.json:{line}:" in r.malformed[0] and "XYZ" in r.malformed[0]


def test_lvb_reader(data):
    r = read_bench("lvb", data["lvb"])
    assert [q.qid for q in r.questions] == ["lvb/q1", "lvb/q2"]
    q = r.questions[0]
    assert q.text == ("What is red?\nA. ball\nB. sun\nC. cat\nD. dog\n"
                      "Answer with the option's letter from the given choices directly.")
    assert (q.answer, q.task, q.group) == ("C", "S2E", "15")
    assert len(r.malformed) == 1 and "lvb_val.json:" in r.malformed[0] and "correct_choice 3" in r.malformed[0]


def test_videomme_reader(data):
    r = read_bench("videomme", data["videomme"])
    assert [q.qid for q in r.questions] == ["videomme/001-1", "videomme/001-2"]
    assert r.questions[0].text == (
        "\nThese are the frames of a video. Select the best answer to the following multiple-choice question based "
        "on the video. Respond with only the letter (A, B, C, or D) of the correct option.\nQuestion: How many "
        "cats?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: ")
    assert r.questions[0].video.endswith(os.path.join("data", "abc123.mp4"))
    assert [m for m in r.missing] == [("videomme/002-1", os.path.join(data["videomme"], "video", "zzz999.mp4"))]
    assert len(r.malformed) == 1 and "row 4" in r.malformed[0]


def test_mvbench_reader(data):
    r = read_bench("mvbench", data["mvbench"])
    qs = r.questions
    assert [q.task for q in qs] == ["Action Count", "Episodic Reasoning"]
    assert qs[0].pre_text == P.MVBENCH_SYSTEM and qs[0].answer == "B"
    assert qs[0].text == ("Question: How many times does the ball jump?\nOptions:\n(A) 1\n(B) 2\n(C) 3"
                          "\nOnly give the best option.Best option:(")
    assert (qs[1].start, qs[1].end, qs[1].answer) == (1.0, 4.0, "C") and os.path.isdir(qs[1].video)
    assert len(r.malformed) == 1 and "action_count.json:" in r.malformed[0] and "'cat'" in r.malformed[0]


def test_json_array_lines_and_syntax_errors(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('[\n {"a": 1},\n\n {"b":\n  2}, {"c": 3}\n]')
    assert list(json_array_records(str(p))) == [(2, {"a": 1}), (4, {"b": 2}), (5, {"c": 3})]
    p.write_text('[\n {"a": 1},\n {"b" 2}\n]')
    with pytest.raises(ValueError, match=r"x.json:3: invalid JSON"):
        list(json_array_records(str(p)))


def test_missing_directory_and_annotations(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_bench("lvb", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="ovo_bench_new.json"):
        read_bench("ovo", str(tmp_path))


# ------------------------------------------------------------------------------------------ frames
def test_frame_sampling_rules():
    # 10 s at 30 fps: frame i ends at (i+1)/30.
    t = np.arange(300) / 30
    tl = F.Timeline(t, t + 1 / 30, 30.0)
    # VLMEvalKit 1 fps: k = floor_even(min(max(300/30, 4), 300, 300)) = 10, at round(linspace(0, 299, 10)).
    assert F.vlm_indices(tl, "1fps").tolist() == np.linspace(0, 299, 10).round().astype(int).tolist()
    assert len(F.vlm_indices(tl, "64")) == 64
    short = F.Timeline(t[:9], t[:9] + 1 / 30, 30.0)
    assert len(F.vlm_indices(short, "64")) == 8  # n//2*2 when shorter than 64
    # OVO [0, 3]: frames with end time in [1/30, 3] are 0..89 (n=90), k = floor_even(min(max(6, 4), 90, 90)) = 6.
    idx = F.ovo_indices(tl, 0.0, 3.0)
    assert idx.tolist() == np.linspace(0, 89, 6).round().astype(int).tolist()
    # CRR-style [ask_time, realtime] with realtime < ask_time + 1 stretches to one second.
    idx = F.ovo_indices(tl, 2.0, 2.5)
    assert t[idx[0]] + 1 / 30 >= 2.0 - 1e-9 and t[idx[-1]] + 1 / 30 <= 3.0 + 1e-9 and len(idx) == 4
    lo, hi = F.pixel_budget("1fps", 768)
    assert lo == 128 * 784 and hi == max(24576 * 784 / 768 * 2, 105369)
    assert F.pixel_budget("1fps", 4)[1] == 768 * 784
    assert F.pixel_budget("ovo", 480) == (100 * 784, max(min(768 * 784, 77_070_336 / 480 * 2), 82_320))


def test_clip_from_file_and_frame_folder(data):
    q = read_bench("mvbench", data["mvbench"]).questions
    clip = F.load_clip(q[0].video, "64")  # 16 frames at 4 fps: all 16, resized to the 128*28^2 floor
    assert clip.frames.shape == (16, 336, 336, 3) and tuple(clip.grid_thw[0]) == (8, 24, 24)
    ep = F.load_clip(q[1].video, "64", q[1].start, q[1].end)  # JPEGs at 3 fps, [1, 4] s -> frames 3..12
    assert len(ep.times) == 10 and ep.times[0] == pytest.approx(1.0) and ep.times[-1] == pytest.approx(4.0)


# ------------------------------------------------------------------------------------------ scoring rules
def test_matchers_and_official_scorer():
    assert P.ovo_prefix_match("A", "A") and not P.ovo_prefix_match("1", "10")
    vm = P.PROTOCOLS["videomme"].match
    assert vm(" B", "B") and not vm("Yes", "A") and not vm("E", "A")
    assert P.mvbench_match("B", "B") and P.mvbench_match("b.", "B") and not P.mvbench_match("C", "B")
    assert P.ovo_official_correct("OCR", "The answer is B.", {"letter": "B"})
    assert P.ovo_official_correct("REC", "1 and 2", {"count": 12})
    assert P.ovo_official_correct("SSR", "N", {"type": 0}) and P.ovo_official_correct("CRR", "Yes!", {"type": 1})
    assert not P.ovo_official_correct("CRR", "No", {"type": 1})


def test_aggregate_follows_each_benchmark():
    recs = [dict(task="OCR", group="realtime", correct=c) for c in (1, 1, 1, 0)]
    recs += [dict(task="ACR", group="realtime", correct=c) for c in (0, 1)]
    recs += [dict(task="EPM", group="backward", correct=0)]
    s = scoring.aggregate("ovo", recs)
    assert s["tasks"]["OCR"]["acc"] == 75.0 and s["groups"]["realtime"] == pytest.approx(62.5)  # mean of 75, 50
    assert s["overall"] == pytest.approx((75 + 50 + 0) / 3)
    assert scoring.headline("ovo", s) == ("Real-time", pytest.approx(62.5))
    v = scoring.aggregate("videomme", [dict(task=t, group="short", correct=c) for t, c in
                                       [("a", 1), ("a", 1), ("a", 1), ("b", 0)]])
    assert v["overall"] == 75.0 and v["groups"]["short"] == 75.0  # over questions, not tasks


def test_restricted_options_scan_the_vocabulary(tok):
    opts = scoring.restricted_options(tok)
    assert set(opts.labels) == {lead + w for w in P.RESTRICTED_WORDS for lead in ("", " ")}
    assert list(opts.ids) == sorted(opts.ids)
    ovo = scoring.ovo_options(tok)
    assert ovo.labels == P.OVO_OPTIONS and ovo.ids[12] == tok.encode("A")[0]


# ------------------------------------------------------------------------------------------ offline
def rig_head(params, hidden, scores):
    """An lm_head whose logits at the rows' last positions are exactly `scores` [Q, V]: W = pinv(H) S."""
    w = np.linalg.lstsq(hidden.astype(np.float64), scores.astype(np.float64), rcond=None)[0]
    return {**params, "lm_head": {"kernel": w.astype(np.float32)}}


@functools.lru_cache(maxsize=1)
def tiny_params():
    """One random model per process, shared by both Video QA test modules (jitted: eager init is slower)."""
    return random_params(CFG)


@pytest.fixture(scope="module")
def params():
    return tiny_params()


def hidden_states(params, prompts):
    """Last-position hidden states [Q, D]: the head set to [I | 0] makes the first D logits the hidden state."""
    d, v = CFG.text.hidden_size, CFG.text.vocab_size
    eye = np.zeros((d, v), np.float32)
    eye[:, :d] = np.eye(d)
    return last_logits(CFG, {**params, "lm_head": {"kernel": eye}}, prompts, batch=2)[:, :d]


def test_offline_logits_equal_forward(params, tok, data):
    q = read_bench("lvb", data["lvb"]).questions[0]
    p = prompt_for(CFG, tok, q)
    ours = last_logits(CFG, params, [p, p], batch=3, attn_chunk=64, vision_chunk=3)
    ref = np.asarray(forward(CFG, params, np.asarray([p.ids]), pixel_values_videos=p.pixel_values,
                             video_grid_thw=np.asarray([p.grid_thw]), second_per_grid_ts=[1.0]))[0, -1]
    assert bucket(len(p.ids)) > len(p.ids)  # the batch really was left-padded
    assert np.max(np.abs(ours - ref[None])) <= 1e-4


@pytest.mark.parametrize("bench", ["ovo", "mvbench"])
def test_offline_picks_the_highest_option_logit(params, tok, data, bench, tmp_path):
    """Rig the head so each question's option scores are known; the restricted argmax must follow them, not
    the larger logit of a non-option token, and `correct` must agree with the benchmark's matcher."""
    qs = read_bench(bench, data[bench]).questions[:4]
    prompts = [prompt_for(CFG, tok, q) for q in qs]
    hid = np.asarray(hidden_states(params, prompts))
    opts = scoring.option_set(bench, tok)
    rng = np.random.default_rng(1)
    scores = np.zeros((len(qs), CFG.text.vocab_size), np.float32)
    want = []
    distractor = tok.encode(" ball")[0]
    for i, q in enumerate(qs):
        s = rng.normal(size=len(opts.ids)).astype(np.float32)
        if i % 2 == 0 and q.answer in opts.labels:  # half the questions rigged to the right answer
            s[opts.labels.index(q.answer)] = 5.0
        scores[i, list(opts.ids)] = s
        scores[i, distractor] = 9.0  # beats every option: only an unrestricted argmax would pick it
        want.append(opts.labels[int(np.argmax(s))])
    rigged = rig_head(params, hid, scores)
    with Predictions(str(tmp_path / PREDICTIONS)) as preds:
        bad = run_offline(CFG, rigged, tok, bench, qs, preds, batch=2, progress=False)
    assert bad == []
    recs = list(preds.done.values())
    assert [r["response"] for r in recs] == want
    assert [r["correct"] for r in recs] == [scoring.is_correct(bench, w, q.answer) for w, q in zip(want, qs)]
    assert recs[0]["correct"]
    if bench == "ovo":
        assert all(r["official_response"] == " ball" and r["official_correct"] is False for r in recs)


def test_resume_after_a_kill_gives_the_same_file(params, tok, data, tmp_path):
    qs = read_bench("ovo", data["ovo"]).questions[:5]
    full = tmp_path / "full"
    full.mkdir()
    with Predictions(str(full / PREDICTIONS)) as preds:
        run_offline(CFG, params, tok, "ovo", qs, preds, batch=2, progress=False)

    class Killed(Exception):
        pass

    class Dies(Predictions):
        def write(self, rec):
            if len(self.done) == 3:  # the kill lands while the 4th line is being written
                self._f.write(json.dumps(rec)[:17])
                self._f.flush()
                raise Killed
            super().write(rec)

    part = tmp_path / "part"
    part.mkdir()
    with pytest.raises(Killed):
        with Dies(str(part / PREDICTIONS)) as preds:
            run_offline(CFG, params, tok, "ovo", qs, preds, batch=2, progress=False)
    assert not (part / PREDICTIONS).read_text().endswith("\n")
    with Predictions(str(part / PREDICTIONS)) as preds:
        assert len(preds.done) == 3
        run_offline(CFG, params, tok, "ovo", qs, preds, batch=2, progress=False)
    assert (part / PREDICTIONS).read_bytes() == (full / PREDICTIONS).read_bytes()
    report = read_bench("ovo", data["ovo"])
    res = finish("ovo", "offline", preds.done.values(), str(part), report, [])
    saved = json.loads((part / "scores.json").read_text())
    assert saved["scores"]["argmax"]["n"] == 5 and len(saved["predictions"]) == 5
    assert saved["read"]["missing_videos"] == 1 and len(saved["read"]["malformed"]) == 1
    assert "official" in saved["scores"] and "| **realtime** |" in res["table"]


# ------------------------------------------------------------------------------------------ CLI
def test_cli_runs_and_resumes(params, tok, data, tmp_path, capsys):
    import svlm_jax
    from experiments.eval_vqa import main

    ckpt = tmp_path / "ckpt"
    svlm_jax.save(str(ckpt), CFG, params)
    tok.tokenizer.save(str(ckpt / "tokenizer.json"))
    out = tmp_path / "out"
    args = ["--bench", "videomme", "--data", data["videomme"], "--ckpt", str(ckpt), "--out", str(out),
            "--batch", "2", "--no-progress"]
    assert main(args) == 0
    text = capsys.readouterr()
    assert "2 questions; 1 skipped for 1 missing videos; 1 malformed records" in text.err
    assert "Video-MME offline overall:" in text.out
    first = (out / PREDICTIONS).read_text()
    assert len(first.splitlines()) == 2
    assert main(args) == 0  # everything answered: resumes with nothing to do
    assert (out / PREDICTIONS).read_text() == first
    assert "resuming: 2 answers" in capsys.readouterr().err
    assert main(["--bench", "lvb", "--data", str(tmp_path / "nope"), "--ckpt", str(ckpt)]) == 2
    assert "does not exist" in capsys.readouterr().err
