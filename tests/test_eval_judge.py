"""Commentary judging: prompts, candidate assembly, AB/BA against a real local HTTP judge, the cache, failures,
the pooled win rate and LiveSports' 2N denominator (hand-computed), and the local log-probability judge."""
import json
import os

import jax
import numpy as np
import pytest

from experiments import eval_inf_streams, eval_livesports
from svlm_jax.eval import prompts
from svlm_jax.eval.datasets import read_windows
from svlm_jax.eval.inf_streams import candidate, pair_windows
from tests.eval_fixtures import ChatServer, checkpoint


@pytest.fixture
def server():
    s = ChatServer(slow_s=1.5)
    yield s
    s.close()


def _jsonl(path, rows, extra=""):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.write(extra)
    return str(path)


CLIPS = [
    {"video": "NBA/g1.mp4", "title": "GSW vs HOU", "content": [[10.2, 10.5, "Curry"], [19.1, 20.0, "three!"]]},
    {"video": "NBA/g1.mp4", "content": [[20.0, 20.4, "pass"], [29.0, 30.0, "goal"]]},
    {"video": "NHL/g2.mp4", "content": [[10.0, 10.5, "Welcome"], [19.0, 20.0, "saved."]]},
    {"video": "NHL/g2.mp4", "content": [[40.0, 40.5, "late"], [49.0, 50.0, "window"]]},  # B does not cover it
    {"video": "NBA/g1.mp4", "content": [[10.9, 11.0, "dup"], [19.0, 20.0, "dup"]]},  # same (video, 10, 20)
]
MERGED_A = [
    {"video": "g1.mp4", "chunk_start": 10, "chunk_end": 30, "items": [
        {"response": "Curry shoots", "start_time": 10, "end_time": 11},
        {"text": "  three!  ", "end_time": 20},  # no response: text is used
        {"response": "", "start_time": 20, "end_time": 21},  # empty: skipped
        {"response": " pass it", "start_time": 24, "end_time": 25},
        {"response": "goal!!", "start_time": 29, "end_time": 30}]},
    {"video": "g2.mp4", "chunk_start": 10, "chunk_end": 50, "items": [
        {"response": "Welcome back everyone", "start_time": 14, "end_time": 15}]},
]
MERGED_B = [
    {"video": "g1.mp4", "chunk_start": 0, "chunk_end": 30, "items": [
        {"response": "boundary", "end_time": 10},  # end_time == start: outside (s, e]
        {"response": "Shot", "end_time": 12}, {"response": "Three pointer is good", "end_time": 20},
        {"response": "x", "end_time": 28}]},
    {"video": "g2.mp4", "chunk_start": 10, "chunk_end": 20, "items": [{"response": "Hello", "end_time": 20}]},
]


@pytest.fixture
def files(tmp_path):
    clips = _jsonl(tmp_path / "clips.jsonl", CLIPS, extra="{not json\n")
    a = _jsonl(tmp_path / "a.jsonl", MERGED_A)
    b = _jsonl(tmp_path / "b.jsonl", MERGED_B)
    return tmp_path, clips, a, b


def test_prompt_strings_are_the_originals():
    assert "video\u2014only describe what\u2019s visible" in prompts.BROADCASTER_QUERY
    assert prompts.BROADCASTER_QUERY.count("\n") == 1
    assert prompts.JUDGE_SYSTEM.startswith("\n    You are a strict A/B evaluator")
    assert "\u201cA\u201d or \u201cB\u201d" in prompts.JUDGE_SYSTEM and prompts.JUDGE_SYSTEM.endswith("them.\n    ")
    msgs = prompts.judge_messages(" r " * 5000, "a" * 9000, " b ")
    assert msgs[1]["content"] == ("Reference transcript (Provide a reference for the tone and on-screen information):\n"
                                  + ("r  " * 5000).strip()[:8000] + "\n\nCandidate A:\n" + "a" * 8000
                                  + "\n\nCandidate B:\nb\n\n")
    # The original's parse, quirks included: "Answer: B" upper-cases to "ANSWER: B", which starts with A.
    assert [prompts.parse_ab(x) for x in (" a.", "B", "", None, "Answer: B")] == ["A", "B", "B", "B", "A"]
    assert [prompts.parse_livesports(x) for x in ("so Commentary B wins", "Commentary A and Commentary B", "?")] \
        == ["B", "A", "tie"]
    assert "(2\u20136)" in prompts.GPT_SYSTEM and "TEXT ONLY \u2014 no" in prompts.GPT_SYSTEM
    assert prompts.commentator_query("X") == prompts.COMMENTATOR_QUERY + 'This is a video titled "X".\n'


def test_candidate_assembly_and_coverage(files):
    _, clips, _, _ = files
    windows, problems = read_windows(clips)
    assert problems.counts == {"malformed": 1, "duplicate": 1}
    assert [(w.key, w.start, w.end) for w in windows] == [("g1.mp4", 10, 20), ("g1.mp4", 20, 30),
                                                          ("g2.mp4", 10, 20), ("g2.mp4", 40, 50)]
    assert windows[0].reference == "Curry\nthree!"
    assert candidate(MERGED_A[0]["items"], 10, 20) == "Curry shoots three!"
    assert candidate(MERGED_A[0]["items"], 20, 30) == "pass it goal!!"
    assert candidate(MERGED_B[0]["items"], 10, 20) == "Shot Three pointer is good"
    pairs, skipped = pair_windows(windows, {m["video"]: m for m in MERGED_A}, {m["video"]: m for m in MERGED_B})
    assert [p.window.id for p in pairs] == ["g1.mp4:10-20", "g1.mp4:20-30", "g2.mp4:10-20"]
    assert skipped.counts == {"not_covered": 1}


def _judge(files, server, *extra):
    root, clips, a, b = files
    return eval_inf_streams.main(["judge", "--clips", clips, "--a", a, "--b", b, "--out", str(root / "run"),
                                  "--judge", "openai:judge-1", "--base-url", server.url, "--api-key", "k",
                                  "--no-progress", *extra])


def test_judge_ab_ba_cache_and_win_rate(files, server, capsys):
    root, clips, a, b = files
    assert _judge(files, server) == 1  # 1 window not covered, 1 malformed and 1 duplicate line: counted
    # Two questions per judged window, both orders, at temperature 0, with the original's prompts.
    assert len(server.requests) == 6
    assert all(r["temperature"] == 0 and r["model"] == "judge-1" for r in server.requests)
    users = sorted(r["messages"][1]["content"] for r in server.requests)
    assert any("Candidate A:\nCurry shoots three!\n\nCandidate B:\nShot Three pointer is good\n\n" == u[-70:] or
               u.endswith("Candidate A:\nCurry shoots three!\n\nCandidate B:\nShot Three pointer is good\n\n")
               for u in users)
    assert any(u.endswith("Candidate A:\nShot Three pointer is good\n\nCandidate B:\nCurry shoots three!\n\n")
               for u in users)
    assert all(r["messages"][0] == {"role": "system", "content": prompts.JUDGE_SYSTEM} for r in server.requests)
    # The rule: the longer candidate wins. w1: B longer (B, B); w2 and w3: A longer (A, A).
    judged = [json.loads(x) for x in open(root / "run" / "judged.jsonl")]
    assert [(r["video"], r["start"], r["votes"], r["winner"]) for r in judged] == [
        ("g1.mp4", 10, {"A": 0, "B": 2}, "B"), ("g1.mp4", 20, {"A": 2, "B": 0}, "A"),
        ("g2.mp4", 10, {"A": 2, "B": 0}, "A")]
    assert judged[0]["judge"] == {"model": "openai:judge-1", "vote_ab": "B", "vote_ba": "B"}
    # A rerun asks nothing; a run killed after its 5th answer (torn 6th line) asks only the lost question.
    assert _judge(files, server) == 1 and len(server.requests) == 6
    cache = root / "run" / "judgments.jsonl"
    lines = cache.read_text().splitlines(True)
    assert len(lines) == 6
    cache.write_text("".join(lines[:5]) + lines[5][:30])
    assert _judge(files, server) == 1 and len(server.requests) == 7
    assert [json.loads(x) for x in open(root / "run" / "judged.jsonl")] == judged
    # Another judge is another cache key.
    _judge(files, server, "--judge", "openai:judge-2")
    assert len(server.requests) == 13
    # Scores: pooled 4 / 6 and per video 2/4 and 2/2 (hand computation), plus the judge-free metrics.
    capsys.readouterr()
    assert eval_inf_streams.main(["score", "--clips", clips, "--out", str(root / "run"), "--a", a, "--b", b,
                                  "--bootstrap", "500"]) == 1  # the malformed/duplicate lines are reported
    s = json.load(open(root / "run" / "scores.json"))
    assert s["win_rate_A"] == round(4 / 6, 4) and (s["votes_A"], s["votes_B"], s["windows"]) == (4, 2, 3)
    assert s["per_video"]["g1.mp4"]["win_rate"] == 0.5 and s["per_video"]["g2.mp4"]["win_rate"] == 1.0
    assert 0 <= s["ci95"][0] <= 4 / 6 <= s["ci95"][1] <= 1
    # Segments over each game's scored span: g1 [10, 30] -> starts 10, 20 in bins 0 and 2; g2 [10, 50] -> bin 0.
    assert [g["windows"] for g in s["segments"]] == [2, 0, 1, 0, 0]
    assert s["segments"][0]["win_rate"] == 2 / 4
    # A's window 1 against "Curry\nthree!": words {curry, shoots, three} vs {curry, three} -> F1 0.8.
    # w2: {pass, it, goal} vs {pass, goal} -> 0.8; w3: {welcome, back, everyone} vs {welcome, saved} -> 0.4.
    f1_a = np.mean([0.8, 2 * (2 / 3) * 1 / (2 / 3 + 1), 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2)])
    assert s["offline"]["A"]["word_f1"] == pytest.approx(round(f1_a, 4), abs=1e-4)
    assert os.path.getsize(root / "run" / "segments.png") > 0
    assert "g1.mp4" in capsys.readouterr().out


def test_failures_are_counted_and_nothing_judged_is_lost(tmp_path, server, capsys):
    clips = _jsonl(tmp_path / "clips.jsonl", [
        {"video": f"g{i}.mp4", "content": [[0.0, 1.0, "ref"], [9.0, 10.0, "end"]]} for i in range(4)])
    bad = ["FAIL500 now", "GARBAGE here", "SLOW call", "fine text"]
    a = _jsonl(tmp_path / "a.jsonl", [{"video": f"g{i}.mp4", "chunk_start": 0, "chunk_end": 10,
                                       "items": [{"response": bad[i], "end_time": 5}]} for i in range(4)])
    b = _jsonl(tmp_path / "b.jsonl", [{"video": f"g{i}.mp4", "chunk_start": 0, "chunk_end": 10,
                                       "items": [{"response": "short", "end_time": 5}]} for i in range(4)])
    args = ["judge", "--clips", clips, "--a", a, "--b", b, "--out", str(tmp_path / "run"), "--judge", "openai:j",
            "--base-url", server.url, "--api-key", "k", "--timeout", "0.5", "--retries", "1", "--backoff", "0.01",
            "--no-progress"]
    assert eval_inf_streams.main(args) == 1
    err = capsys.readouterr().err
    assert "judge_error=6" in err and "unjudged_window=3" in err
    assert "InternalServerError" in err and "APITimeoutError" in err
    cache = tmp_path / "run" / "judgments.jsonl"
    assert len(cache.read_text().splitlines()) == 2  # the good window's two answers are kept
    n = len(server.requests)
    assert n == 2 + 3 * 2 * 2  # good window: 2; each bad question: 2 attempts
    server.healed = True
    assert eval_inf_streams.main(args) == 0
    assert len(server.requests) == n + 6  # only the 6 failed questions are asked again
    assert len([json.loads(x) for x in open(tmp_path / "run" / "judged.jsonl")]) == 4


def test_a_400_for_temperature_falls_back_to_none_once(server):
    from svlm_jax.eval.judges import OpenAIJudge

    judge = OpenAIJudge("no-temperature", base_url=server.url, api_key="k", retries=0)
    msgs = prompts.judge_messages("ref", "longer text", "short")
    assert judge.ask(msgs) == "a" and judge.ask(msgs) == "a"
    # The first question is sent with temperature 0 (400), then without; the second goes without at once.
    assert ["temperature" in r for r in server.requests] == [True, False, False]
    assert server.requests[0]["temperature"] == 0


def test_bad_judge_spec_and_missing_files_are_one_line(files, capsys):
    root, clips, a, b = files
    assert eval_inf_streams.main(["judge", "--clips", clips, "--a", a, "--b", b, "--out", str(root / "r"),
                                  "--judge", "gpt-5"]) == 2
    assert "openai:MODEL or local:CKPT" in capsys.readouterr().err
    assert eval_inf_streams.main(["judge", "--clips", str(root / "none.jsonl"), "--a", a, "--b", b, "--out",
                                  str(root / "r"), "--judge", "openai:x", "--api-key", "k"]) == 2
    assert "error: No scoring windows" in capsys.readouterr().err


def test_livesports_judge_2n_denominator(tmp_path, server, capsys):
    events = _jsonl(tmp_path / "events.jsonl", [
        {"video": f"v{i}.mp4", "video_id": f"v{i}", "event_id": i, "begin": 1.0, "end": 5.0,
         "event_title": "t", "preasr_text": "", "event_asr_text": f"human {i}"} for i in range(3)])
    base = _jsonl(tmp_path / "base.jsonl", [{"video_id": f"v{i}", "event_id": i, "pred": "medium pred"}
                                            for i in range(3)])
    model = _jsonl(tmp_path / "model.jsonl", [{"video_id": "v0", "event_id": 0, "pred": "a much longer pred"},
                                              {"video_id": "v1", "event_id": 1, "pred": "short"}])
    out = tmp_path / "judge"
    assert eval_livesports.main(["judge", "--events", str(events), "--baseline", str(base), "--pred", str(model),
                                 "--out", str(out), "--judge", "openai:gpt-4o-mini", "--base-url", server.url,
                                 "--api-key", "k", "--no-progress"]) == 1  # v2's prediction is missing: counted
    # v0: model longer, wins AB and BA; v1: loses both; v2: both texts "", the judge is undecided: a tie (a loss).
    score = json.load(open(out / "score.json"))
    assert score == {"events": 3, "model_wins": 2, "win_rate_percent": round(100 * 2 / 6, 2)}
    assert all(r["seed"] == 42 and r["temperature"] == 0 for r in server.requests)
    assert len(server.requests) == 6
    blank = [r for r in server.requests if "human 2" in r["messages"][0]["content"]]
    assert all("---Commentary A---\n\n" in r["messages"][0]["content"] for r in blank)


def test_local_judge_is_deterministic_and_matches_a_full_forward():
    from svlm_jax import forward
    from svlm_jax.eval.judges import LocalJudge

    judge = LocalJudge(checkpoint(), pad_to=64)
    msgs = prompts.judge_messages("Curry three", "Curry shoots three", "what a play")
    lp = judge.logprobs(msgs, ("A", "B"))
    assert judge.ask(msgs) == ("A", "B")[int(np.argmax(lp))] == judge.ask(msgs)
    assert np.array_equal(judge.logprobs(msgs, ("A", "B")), lp)
    # Against one full causal forward over the prompt and "Commentary A": the logits at the prompt's last
    # position give the first answer token, and multi-token answers sum their tokens' log-probabilities.
    ids = judge.prompt_ids(msgs)
    a_ids = judge.tok.encode("Commentary A")
    steps = jax.nn.log_softmax(forward(judge.cfg, judge.params, np.asarray([ids + a_ids]))[0, len(ids) - 1:])
    want = [float(steps[0, judge.tok.encode(c)[0]]) for c in ("A", "B")]
    np.testing.assert_allclose(lp, want, rtol=1e-5, atol=1e-5)
    two = judge.logprobs(msgs, ("Commentary A", "Commentary B"))
    np.testing.assert_allclose(two[0], sum(float(steps[i, t]) for i, t in enumerate(a_ids)), rtol=1e-5, atol=1e-5)
