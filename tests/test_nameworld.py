"""The name world: the commentary carries each object's name; the frames show every event in its second."""
import json

import numpy as np

from experiments.train import demo_model_config
from svlm_jax.data import chunker, nameworld, synthetic
from svlm_jax.data.format import read_jsonl
from svlm_jax.video import read_frames


def _scene(seconds=90, seed=3):
    return nameworld.simulate(seconds, nameworld.world_config(), np.random.default_rng(seed))


def test_commentary_states_the_simulated_name_of_every_object():
    scene = _scene()
    events = nameworld.events_of(scene)
    assert {e.action for e in events} == set(synthetic.ACTIONS)
    rounds = chunker.assign_rounds(nameworld.words_of(events), 0.0, int(scene.duration))
    by_round = {}
    for e in events:
        by_round.setdefault(e.round, []).append((e.phrase, e.name))
    for r, words in enumerate(rounds):
        assert nameworld.parse_calls(" ".join(words)) == by_round.get(r, [])
    # Every call about an object repeats the name it was given on entry, which is the simulated one.
    for o, k in zip(scene.objs, scene.names):
        colour = synthetic.OBJECTS[o.kind][0]
        entry = nameworld._round_of(o.path(scene.cfg)[0][0][0], scene.cfg)
        mine = [e for e in events if e.colour == colour and e.entered == entry]
        assert mine and {e.name for e in mine} == {nameworld.NAMES[k]}
        assert mine[0].action == "enters" and mine[0].round == entry
    # Lives outlast the vision window, so the name has to come back from older commentary.
    assert max(e.round - e.entered for e in events) > 8


def test_frames_show_every_event_in_its_own_second_and_the_name_only_at_entry():
    scene = _scene()
    cfg, col = scene.cfg, scene.cfg.size // len(nameworld.NAMES)
    bg = np.asarray(synthetic.BACKGROUND)
    for e in nameworld.events_of(scene):
        kind = next(i for i, (c, _, _) in enumerate(synthetic.OBJECTS) if c == e.colour)
        lane = slice(kind * cfg.shape, (kind + 1) * cfg.shape)
        for t in (e.round, e.round + 0.5):  # both sampled frames of the event's second
            img = nameworld.render(scene, t)[lane]
            lit = (np.abs(img.astype(int) - bg).sum(-1) > 30).mean()
            assert lit > 0.4, (e, t)  # the lane glows
            k = nameworld.NAMES.index(e.name)
            notch = (img[:, k * col:(k + 1) * col] == nameworld.NOTCH).all(-1).mean()
            if e.action == "enters":
                assert notch == 1, (e, t)  # the name is on screen
                others = [j for j in range(len(nameworld.NAMES)) if j != k]
                assert all((img[:, j * col:(j + 1) * col] == nameworld.NOTCH).all(-1).mean() == 0 for j in others)
            elif not any(x.action == "enters" and x.round == e.round and x.colour == e.colour
                         for x in nameworld.events_of(scene)):
                assert notch == 0, (e, t)  # later, nothing on screen tells the name


def test_written_dataset_round_trips_words_events_and_the_name_notch(tmp_path):
    spec = nameworld.NameWorldSpec(train_videos=1, video_seconds=30, streams=1, stream_seconds=30, seed=5)
    paths = nameworld.write_dataset(str(tmp_path), spec, demo_model_config())
    (rec,), report = read_jsonl(paths["streams"])
    events = nameworld.load_events(paths["stream_events"][0])
    assert report.kept == 1 and list(rec.words) == [tuple(w) for w in nameworld.words_of(events)]
    entries = [e for e in events if e.action == "enters"]
    assert entries
    frames = dict((round(t, 3), f) for t, f in read_frames(paths["stream_videos"][0], fps=2))
    col = 56 // len(nameworld.NAMES)
    for e in entries:
        kind = next(i for i, (c, _, _) in enumerate(synthetic.OBJECTS) if c == e.colour)
        img = frames[float(e.round) + 0.5][kind * 14:(kind + 1) * 14].astype(float)
        # After h264, the darkest column of the lit lane is the name's.
        brightness = [img[:, j * col:(j + 1) * col].mean() for j in range(len(nameworld.NAMES))]
        assert int(np.argmin(brightness)) == nameworld.NAMES.index(e.name), (e, brightness)
    assert json.loads(open(paths["train"]).readline())[1]["content"][0]["type"] == "text_stream"


def test_score_counts_events_names_and_memory_by_hand():
    ev = [nameworld.NamedEvent(1.0, 1, "red", "square", "enters", "zed", 1),
          nameworld.NamedEvent(4.0, 4, "blue", "triangle", "enters", "ace", 4),
          nameworld.NamedEvent(5.0, 5, "red", "square", "bounces", "zed", 1),
          nameworld.NamedEvent(9.0, 9, "red", "square", "leaves", "zed", 1)]
    comments = [(float(t), "") for t in range(10)]
    comments[1] = (1.0, "red square enters zed")  # right event, right name
    comments[4] = (4.0, "blue triangle enters max green circle leaves sam")  # wrong name; one extra call
    comments[5] = (5.0, "red square bounces zed")  # name from memory, 4 rounds after entry
    comments[8] = (8.0, "red square leaves zed")  # a second early: not matched
    s = nameworld.score(ev, comments, memory_after=3)
    assert (s["events"], s["calls"], s["correct"]) == (4, 5, 3)
    assert (s["entry_named"], s["entry_ok"], s["state_named"], s["state_ok"]) == (2, 1, 1, 1)
    assert (s["memory_named"], s["memory_ok"]) == (1, 1)
    assert s["recall"] == 3 / 4 and s["precision"] == 3 / 5 and s["entry_acc"] == 0.5 and s["state_acc"] == 1.0
    segs = nameworld.segments(ev, comments, parts=2, memory_after=3)  # rounds 0-4 and 5-9
    assert [x["events"] for x in segs] == [2, 2] and [x["correct"] for x in segs] == [2, 1]
    assert nameworld.pool(segs)["correct"] == 3
    assert nameworld.parse_calls("red square bounces blue triangle leaves ace") == [
        ("red square bounces", None), ("blue triangle leaves", "ace")]


def test_name_slots_tell_entry_copy_and_unseen():
    words = ["red", "square", "enters", "zed", None, "blue", "triangle", "bounces", "ace", "red", "square",
             "bounces", "zed", "<|im_end|>", "red", "square", "leaves", "zed", "red", "square", "enters", "max",
             "blue", "triangle", "leaves", "ace", "bounces", "sam"]
    assert nameworld.name_slots(words) == [(3, "entry"), (8, "unseen"), (12, "copy"), (17, "copy"), (21, "entry"),
                                           (25, "copy")]
