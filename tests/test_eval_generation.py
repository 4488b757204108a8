"""Inf-Streams-Eval generation on a synthetic dataset in the released layout: batched rows, resume after a kill
(replayed by teacher forcing) to the same output, chunked mode re-seeded from the ground truth, counted skips."""
import json
import os
import shutil

import pytest

from experiments import eval_inf_streams
from svlm_jax.eval import generation
from svlm_jax.eval.datasets import phrase_before, read_games
from svlm_jax.eval.prompts import BROADCASTER_QUERY
from tests.eval_fixtures import GAMES, checkpoint, write_dataset

# Tiny shapes: 56x56 frames are 4 vision tokens a second; the word-level tokenizer spells the query out long.
SMALL = ["--start", "2", "--batch", "2", "--vision-tokens", "4", "--min-pixels", str(56 * 56), "--max-pixels",
         str(56 * 56), "--vision-window", "2", "--text-sink", "8", "--text-window", "8", "--max-new-tokens", "4",
         "--query-tokens", "256", "--temperature", "1.0", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("infstreams")
    return write_dataset(root), checkpoint(), root


def _generate(data_dir, ckpt, out, *extra):
    return eval_inf_streams.main(["generate", "--data", data_dir, "--ckpt", ckpt, "--out", str(out), *SMALL, *extra])


def _logs(out):
    d = os.path.join(out, "seconds")
    return {f: open(os.path.join(d, f)).read() for f in sorted(os.listdir(d))}


def test_phrase_before_follows_the_original_rule():
    content = GAMES["NBA/g1.mp4"]  # holds [1.9, 1.5, "Curry"]: a word that starts after it ends
    assert phrase_before(content, 1.5) == " Good evening Curry"  # counted by its end time
    assert phrase_before(content, 1.4) == " Good evening"
    assert phrase_before([[0, 1, "a"], [1, 9, "late"], [2, 3, "hidden"]], 5) == " a"  # stops at the first late word


def test_killed_run_resumes_to_the_same_output(data, capsys):
    data_dir, ckpt, root = data
    full, cut = root / "full", root / "cut"
    assert _generate(data_dir, ckpt, full) == 0
    merged = [json.loads(x) for x in open(full / "merged_result.jsonl")]
    assert [(m["video"], m["chunk_start"], m["chunk_end"], len(m["items"])) for m in merged] == [
        ("g1.mp4", 2, 6, 4), ("g2.mp4", 2, 5, 3)]
    assert merged[0]["items"][0]["start_time"] == 2 and merged[0]["items"][-1]["end_time"] == 6
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["seconds"] == 7

    # Same settings, killed after the second batched step (4 seconds written), then a torn line as if killed
    # mid-write; the rerun replays the logged seconds and continues.
    a = eval_inf_streams.parse_args(["generate", "--data", data_dir, "--ckpt", ckpt, "--out", str(cut), *SMALL])
    games, _ = read_games(data_dir)
    jobs, _ = generation.inf_streams_jobs(games, start=2)

    def kill(n):
        if n >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generation.run_jobs(jobs, eval_inf_streams.load_setup(a), str(cut), batch=2, progress=False, on_second=kill)
    log = cut / "seconds" / "g1.mp4@2.jsonl"
    assert len(open(log).read().splitlines()) == 3  # header + 2 seconds
    with open(log, "a") as f:
        f.write('{"t": 4, "response": "tor')
    capsys.readouterr()
    assert _generate(data_dir, ckpt, cut) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (summary["replayed"], summary["seconds"]) == (4, 3)
    assert _logs(cut) == _logs(full)
    assert open(cut / "merged_result.jsonl").read() == open(full / "merged_result.jsonl").read()
    # A finished run is not redone; other settings on the same output are refused.
    assert _generate(data_dir, ckpt, cut) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["seconds"] == 0
    assert _generate(data_dir, ckpt, cut, "--seed", "7") == 2
    assert "written for another job or other settings" in capsys.readouterr().err


def test_chunked_mode_reseeds_from_ground_truth_and_counts_bad_lines(data, capsys, tmp_path):
    data_dir, ckpt, root = data
    meta = tmp_path / "meta.jsonl"
    shutil.copy(os.path.join(data_dir, "eval_all_metadata.jsonl"), meta)
    with open(meta, "a") as f:
        f.write('{"video": "NBA/g1.mp4", "content": [[0, 1, "x"]\n')  # malformed
        f.write(json.dumps({"video": "NBA/gone.mp4", "content": [[0.0, 9.0, "x"]]}) + "\n")  # no such video
        f.write(json.dumps({"video": "NBA/g3.mp4"}) + "\n")  # no content
    out = tmp_path / "chunked"
    assert _generate(data_dir, ckpt, out, "--chunk", "2", "--metadata", str(meta)) == 1
    err = capsys.readouterr().err
    assert "malformed=2" in err and "missing_video=1" in err and "gone.mp4 not found" in err
    heads = {k: json.loads(v.splitlines()[0])["job"] for k, v in _logs(out).items()}
    assert {k: h["previous_text"] for k, h in heads.items()} == {
        "g1.mp4@2.jsonl": " Good evening Curry", "g1.mp4@4.jsonl": " Good evening Curry shoots three",
        "g2.mp4@2.jsonl": " Welcome", "g2.mp4@4.jsonl": " Welcome pass goal"}
    assert all(h["query"] == BROADCASTER_QUERY for h in heads.values())
    merged = [json.loads(x) for x in open(out / "merged_result.jsonl")]
    assert [[it["start_time"] for it in m["items"]] for m in merged] == [[2, 3, 4, 5], [2, 3, 4]]
    # Re-merging (here: rerunning a finished generate) never duplicates items.
    assert _generate(data_dir, ckpt, out, "--chunk", "2") == 0
    assert [json.loads(x) for x in open(out / "merged_result.jsonl")] == merged


def test_processes_split_the_games(data, capsys, tmp_path):
    data_dir, ckpt, _ = data
    out = tmp_path / "split"
    assert _generate(data_dir, ckpt, out, "--process-index", "1", "--process-count", "2") == 0
    assert list(_logs(out)) == ["g2.mp4@2.jsonl"]  # jobs g1, g2: process 1 of 2 takes the second
    # The merged file holds the games finished so far; g1 belongs to the other process.
    assert [json.loads(x)["video"] for x in open(out / "merged_result.jsonl")] == ["g2.mp4"]
    assert _generate(data_dir, ckpt, out, "--process-index", "2", "--process-count", "2") == 2
    assert "--process-index must be in 0..1" in capsys.readouterr().err


def test_missing_dataset_is_one_line(tmp_path, capsys):
    assert eval_inf_streams.main(["generate", "--data", str(tmp_path), "--ckpt", str(tmp_path), "--out",
                                  str(tmp_path / "o")]) == 2
    assert "error: No eval_all_metadata.jsonl" in capsys.readouterr().err


def test_livesports_generation_uses_asr_and_title(data, capsys, tmp_path):
    from experiments import eval_livesports
    from svlm_jax.eval.prompts import commentator_query

    data_dir, ckpt, _ = data
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(e) + "\n" for e in [
        {"video": "NBA/g1.mp4", "video_id": "g1", "event_id": 3, "begin": 1.5, "end": 4.2, "event_title": "Dunk",
         "preasr_text": " earlier words", "event_asr_text": "human"},
        {"video": "NHL/g2.mp4", "video_id": "g2", "event_id": 0, "begin": 0.0, "end": 1.0, "event_title": "",
         "preasr_text": None, "event_asr_text": "human"}]))
    out = tmp_path / "ls"
    small = SMALL[2:]  # without --start
    assert SMALL[:2] == ["--start", "2"]
    assert eval_livesports.main(["generate", "--events", str(events), "--videos", data_dir, "--ckpt", ckpt,
                                 "--out", str(out), *small]) == 0
    heads = {k: json.loads(v.splitlines()[0])["job"] for k, v in _logs(out).items()}
    assert heads["g1_3.jsonl"]["previous_text"] == " earlier words" and heads["g2_0.jsonl"]["previous_text"] == ""
    assert heads["g1_3.jsonl"]["query"] == commentator_query("Dunk") != commentator_query("")
    secs = [json.loads(x) for x in _logs(out)["g1_3.jsonl"].splitlines()[1:-1]]
    assert [s["t"] for s in secs] == [1.5, 2.5]  # floor(4.2 - 1.5) = 2 seconds from `begin`
    preds = [json.loads(x) for x in open(out / "predictions.jsonl")]
    assert preds[0] == {"video_id": "g1", "event_id": "3", "begin": 1.5, "end": 4.2,
                        "pred": "".join(s["response"] for s in secs)}
    assert len(preds) == 2
