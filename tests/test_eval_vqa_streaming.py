"""Video QA on the live stream: questions enter the cache at their second, the answer logits equal `forward`
on the same retained sequence, the stream goes on commentating afterwards, and a killed run resumes to the
same predictions file."""
import json

import numpy as np
import pytest

from svlm_jax import forward
from svlm_jax.cache import StreamConfig
from svlm_jax.eval.vqa import protocols as P
from svlm_jax.eval.vqa.readers import read_bench
from svlm_jax.eval.vqa.results import PREDICTIONS, Predictions
from svlm_jax.eval.vqa.streaming import ask_second, plan_lanes, run_streaming, stream_config
from tests.test_eval_vqa import CFG, data, make_tokenizer, params, write_ovo  # noqa: F401 (fixtures)

PX = 100 * 28 * 28  # one budget for min and max: every second is 280x280 -> 100 vision tokens
BASE = StreamConfig(vision_window=8, text_sink=16, text_window=16, max_new_tokens=4, round_tokens=32,
                    prefix_tokens=24, query_tokens=8)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def ordered(cache, b):
    """The retained tokens of stream b in logical order, from the device cache."""
    order = np.asarray(cache.order)[b]
    slots = np.flatnonzero(order >= 0)
    return np.asarray(cache.tokens)[b][slots[np.argsort(order[slots])]].tolist()


def test_lane_planning():
    assert [ask_second(t) for t in (0.0, 0.5, 1.0, 1.2, 3.0, 3.5)] == [0, 0, 0, 1, 2, 3]


def test_ovo_lanes_share_a_stream_and_split_same_second(data):
    qs = read_bench("ovo", data["ovo"]).questions
    lanes = plan_lanes(qs)
    a = [ln for ln in lanes if ln.video.endswith("a.mp4")]
    # a.mp4: OCR @3.0 (s2), REC @2.0 (s1), REC @4.0 (s3), CRR @2.0 (s1, clashes with REC), CRR @4.0 (s3).
    assert len(a) == 2 and sorted(a[0].asks) == [1, 2, 3] and sorted(a[1].asks) == [1, 3]
    assert a[0].asks[2].qid == "ovo/0" and a[1].asks[1].qid == "ovo/4/0" and a[0].seconds == 4


def test_question_on_the_live_cache_matches_forward(params, tok, data, tmp_path):
    """Every asked second: the question sits in that second's user turn of the cache; at the last one (after
    two earlier questions and answers) the option logits equal forward() on the retained sequence; the stream
    keeps commentating after a question."""
    qs = [q for q in read_bench("ovo", data["ovo"]).questions if q.video.endswith("b.mp4")]
    scfg = stream_config(tok, qs, max_pixels=PX, base=BASE)
    secs: dict[int, list] = {}
    seen: list[dict] = []

    def check(st, b, lane, sec, comment):
        secs.setdefault(lane.stream_id, []).append(sec)
        q = lane.asks.get(sec.index)
        if q is None:
            seen.append(dict(second=sec.index, asked=False, text=comment.tokens))
            return
        ids = ordered(st.cache, b)
        prefix = tok.encode("assistant\n" + P.OVO_ANSWER_PREFIX)
        header = [tok.im_start] + prefix
        at = max(i for i in range(len(ids)) if ids[i:i + len(header)] == header) + len(header)
        user = max(i for i in range(at) if ids[i:i + 2] == [tok.im_start, tok.encode("user")[0]])
        qtok = tok.encode(" " + q.text) if sec.index else tok.encode(q.text)
        # The question sits right after this second's time stamp, before its frames.
        stamp = tok.encode(f"user\nTime={sec.t0:.1f}-{sec.t1:.1f}s")
        assert ids[user + 1:user + 1 + len(stamp) + len(qtok)] == stamp + qtok
        if sec.index != max(lane.asks):  # forward() compiles per length: compare at the last question, whose
            seen.append(dict(second=sec.index, asked=True, diff=0.0, question=comment.question))  # context
            return  # holds the earlier questions and answers
        lane_secs = secs[lane.stream_id]
        ref = np.asarray(forward(CFG, st.params, np.asarray([ids[:at]]),
                                 pixel_values_videos=np.concatenate([s.pixel_values for s in lane_secs]),
                                 video_grid_thw=np.concatenate([s.grid_thw for s in lane_secs]),
                                 second_per_grid_ts=[lane_secs[0].second_per_grid_ts] * len(lane_secs),
                                 time_mode="float"))[0, -1]
        diff = float(np.max(np.abs(st.last_prefill_logits[b] - ref)))
        seen.append(dict(second=sec.index, asked=True, diff=diff, question=comment.question))

    with Predictions(str(tmp_path / PREDICTIONS)) as preds:
        bad = run_streaming(CFG, params, tok, "ovo", qs, preds, batch=2, scfg=scfg, min_pixels=PX, max_pixels=PX,
                            progress=False, on_step=check)
    assert bad == []
    asked = [s for s in seen if s["asked"]]
    assert len(asked) == 3 and max(s["diff"] for s in asked) <= 1e-4, asked
    assert all(s["question"] is not None for s in asked)
    recs = list(preds.done.values())
    assert sorted(r["qid"] for r in recs) == ["ovo/1", "ovo/3/0", "ovo/3/1"]
    assert {r["qid"]: r["second"] for r in recs} == {"ovo/1": 4, "ovo/3/0": 1, "ovo/3/1": 3}
    # Seconds after a question go on as plain commentary turns on the same stream.
    after = [s for s in seen if not s["asked"] and s["second"] in (2,)]
    assert after and all(len(s["text"]) > 0 for s in after)


def test_streaming_resume_after_a_kill_gives_the_same_file(params, tok, data, tmp_path):
    qs = [q for q in read_bench("ovo", data["ovo"]).questions if q.video.endswith("a.mp4")]  # two lanes
    scfg = stream_config(tok, qs, max_pixels=PX, base=BASE)
    kw = dict(batch=2, scfg=scfg, min_pixels=PX, max_pixels=PX, progress=False)
    full = tmp_path / "full"
    full.mkdir()
    with Predictions(str(full / PREDICTIONS)) as preds:
        run_streaming(CFG, params, tok, "ovo", qs, preds, **kw)
    assert len(preds.done) == len(qs)

    class Killed(Exception):
        pass

    class Dies(Predictions):
        def write(self, rec):
            if len(self.done) == 2:
                self._f.write(json.dumps(rec)[:9])
                self._f.flush()
                raise Killed
            super().write(rec)

    part = tmp_path / "part"
    part.mkdir()
    with pytest.raises(Killed):
        with Dies(str(part / PREDICTIONS)) as preds:
            run_streaming(CFG, params, tok, "ovo", qs, preds, **kw)
    with Predictions(str(part / PREDICTIONS)) as preds:
        run_streaming(CFG, params, tok, "ovo", qs, preds, **kw)
    a = sorted((full / PREDICTIONS).read_text().splitlines())
    b = sorted((part / PREDICTIONS).read_text().splitlines())
    assert a == b


def test_cli_streaming_mode(params, tok, data, tmp_path, capsys):
    """LongVideoBench on the stream: both questions of the video are asked at its last second, in two lanes."""
    import svlm_jax
    from experiments.eval_vqa import main

    ckpt = tmp_path / "ckpt"
    svlm_jax.save(str(ckpt), CFG, params)
    tok.tokenizer.save(str(ckpt / "tokenizer.json"))
    out = tmp_path / "out"
    assert main(["--bench", "lvb", "--data", data["lvb"], "--ckpt", str(ckpt), "--out", str(out), "--mode",
                 "streaming", "--max-pixels", str(PX), "--vision-window", "4", "--no-progress"]) == 0
    assert "LongVideoBench streaming overall:" in capsys.readouterr().out
    recs = [json.loads(x) for x in (out / PREDICTIONS).read_text().splitlines()]
    assert sorted(r["qid"] for r in recs) == ["lvb/q1", "lvb/q2"]
    assert all(r["mode"] == "streaming" and r["second"] == 3 for r in recs)  # a 4-s video: last second is 3
