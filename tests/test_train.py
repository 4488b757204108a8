"""Training: token-mean accumulation, frozen vision, NaN stop, kill-and-resume, and 1 vs 8 devices."""
import os
import subprocess
import sys
import textwrap

import grain
import jax
import numpy as np
import pytest

from svlm_jax import ModelConfig, VisionConfig, init_params
from svlm_jax.data import chunker
from svlm_jax.data.sample import SampleConfig, build_sample, collate
from svlm_jax.tokenizer import ChatTokenizer, word_level_tokenizer
from svlm_jax.train import loop as loop_lib
from svlm_jax.train.optim import OptimConfig
from svlm_jax.train.sharding import make_mesh, shard_batch
from svlm_jax.train.step import StepConfig, Trainer

# The tiny model with a 2-block vision tower: a smaller graph compiles faster.
CFG = ModelConfig.tiny().replace(vision=VisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                                                     fullatt_block_indexes=(1,), out_hidden_size=64))
WORDS = ["red", "ball", "enters", "bounces", "leaves", "blue", "box"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_batches(n: int, rows: int = 2, seed: int = 0) -> list[dict]:
    """n collated batches of hand-made chunks with random vision (no video decoding)."""
    tok = ChatTokenizer.from_tokenizer(word_level_tokenizer(WORDS, CFG))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        samples = []
        for _ in range(rows):
            rounds = tuple(tuple(rng.choice(WORDS, size=rng.integers(0, 3))) for _ in range(int(rng.integers(2, 5))))
            c = chunker.Chunk(video="v", start=float(rng.integers(0, 50)), rounds=rounds,
                              previous=" ".join(rng.choice(WORDS, size=5)))
            px = rng.standard_normal((c.num_rounds * 16, CFG.vision.patch_dim)).astype(np.float32)
            samples.append(build_sample(c, tok, CFG, SampleConfig(), vision=(px, np.array([[1, 4, 4]]))))
        out.append(collate(samples, rows, CFG, pad_id=tok.endoftext))
    return out


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0))


@pytest.fixture(scope="module")
def trainer(params):
    """One compiled trainer shared by the loop tests: accumulation 2, frozen vision, remat."""
    return Trainer(CFG, OptimConfig(lr=5e-3, total_steps=5, warmup_ratio=0.2, accum_steps=2), make_mesh(), params,
                   StepConfig(remat=True))


def _leaves(tree):
    return jax.tree_util.tree_leaves_with_path(jax.device_get(tree))


def test_chunked_attention_gives_the_same_loss_and_gradient(params):
    """StepConfig.attn_chunk only bounds memory: the loss and gradient equal the unchunked ones."""
    from svlm_jax.train.loss import loss_sum

    batch = {k: jax.numpy.asarray(v) for k, v in make_batches(1, rows=2, seed=4)[0].items()}
    assert batch["input_ids"].shape[1] > 64

    def run(chunk):
        f = jax.jit(jax.value_and_grad(lambda p: loss_sum(CFG, p, batch, attn_chunk=chunk, stop_vision_grad=False)[0]))
        return f(params)

    (l0, g0), (l1, g1) = run(None), run(48)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    for (path, a), (_, b) in zip(_leaves(g0), _leaves(g1)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=str(path))  # summation order only


def test_accumulation_averages_over_all_tokens(params):
    """accum=2 over two microbatches == one step on both at once (loss is a mean over all their tokens)."""
    b1, b2 = make_batches(2, rows=2, seed=1)
    assert b1["loss_mask"].sum() != b2["loss_mask"].sum()  # unequal token counts make the test meaningful
    both = {k: np.concatenate([b1[k], b2[k]]) for k in b1}
    mesh = make_mesh()
    # A huge eps makes Adam's first update linear in the gradient, so a wrong average would show.
    kw = dict(lr=1e-2, warmup_ratio=0.0, total_steps=4, eps=1e3, clip_norm=0.0, frozen=())
    t2 = Trainer(CFG, OptimConfig(accum_steps=2, **kw), mesh, params, StepConfig(remat=False))
    t1 = Trainer(CFG, OptimConfig(accum_steps=1, **kw), mesh, params, StepConfig(remat=False))
    s2 = t2.init(params)
    s2, m_a = t2.train_step(s2, shard_batch(b1, mesh))
    assert int(s2.step) == 0 and int(s2.micro) == 1
    s2, m_b = t2.train_step(s2, shard_batch(b2, mesh))
    s1, m = t1.train_step(t1.init(params), shard_batch(both, mesh))
    assert int(s2.step) == int(s1.step) == 1
    np.testing.assert_allclose(float(m_a["loss_sum"] + m_b["loss_sum"]), float(m["loss_sum"]), rtol=1e-5)
    moved = 0
    for (path, a), (_, b), (_, p0) in zip(_leaves(s2.params), _leaves(s1.params), _leaves(params)):
        np.testing.assert_allclose(a - p0, b - p0, rtol=1e-4, atol=1e-11, err_msg=jax.tree_util.keystr(path))
        moved += bool(np.any(a != p0))
    assert moved > 0


def test_frozen_vision_is_unchanged(params, trainer):
    assert trainer.stop_vision_grad
    state = trainer.init(params)
    for b in make_batches(4, seed=2):
        state, _ = trainer.train_step(state, shard_batch(b, trainer.mesh))
    assert int(state.step) == 2
    new = jax.device_get(state.params)
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(new["visual"]),
                                 jax.tree_util.tree_leaves_with_path(jax.device_get(params["visual"]))):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    assert not np.array_equal(new["text"]["layers_0"]["mlp"]["up_proj"]["kernel"],
                              np.asarray(params["text"]["layers_0"]["mlp"]["up_proj"]["kernel"]))


def _batch_iter(batches):
    """A checkpointable Grain iterator over prebuilt batches (endless)."""
    return iter(grain.MapDataset.source(batches).repeat(None).to_iter_dataset())


class _Crash(Exception):
    pass


def test_kill_and_resume_matches_uninterrupted_run(params, trainer, tmp_path):
    batches = make_batches(3, seed=3)
    tr = trainer
    fresh = lambda: tr.init(params)  # noqa: E731
    cfg_a = loop_lib.LoopConfig(out=str(tmp_path / "a"), total_steps=5, save_every=2, progress=False)
    full, res = loop_lib.train(tr, fresh, _batch_iter(batches), cfg_a)
    assert res.step == 5 and res.resumed_from is None

    cfg_b = loop_lib.LoopConfig(out=str(tmp_path / "b"), total_steps=5, save_every=2, progress=False)

    def crash(step, state):
        if step == 3:  # after step 3, before its (not yet due) checkpoint: like a kill -9
            raise _Crash

    with pytest.raises(_Crash):
        loop_lib.train(tr, fresh, _batch_iter(batches), cfg_b, on_step=crash)
    resumed, res = loop_lib.train(tr, fresh, _batch_iter(batches), cfg_b)
    assert res.resumed_from == 2 and res.step == 5
    for (path, a), (_, b) in zip(_leaves(full.params), _leaves(resumed.params)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    steps = [r["step"] for r in loop_lib.read_metrics(os.path.join(cfg_b.out, loop_lib.METRICS_FILE))
             if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5]  # the lost step 3 was logged once, after the resume
    assert os.path.exists(os.path.join(cfg_b.out, loop_lib.PLOT_FILE))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(params, trainer, tmp_path):
    batches = make_batches(5, seed=4)  # two microbatches per step: batch 4 is the first of step 3
    batches[4] = dict(batches[4], pixel_values=np.full_like(batches[4]["pixel_values"], np.nan))
    tr = trainer
    cfg = loop_lib.LoopConfig(out=str(tmp_path / "nan"), total_steps=5, save_every=1, progress=False)
    seen = {}
    with pytest.raises(loop_lib.NonFiniteLoss, match="at step 3;.*checkpoint \\(step 2\\)"):
        loop_lib.train(tr, lambda: tr.init(params), _batch_iter(batches), cfg,
                       on_step=lambda s, st: seen.__setitem__(s, jax.device_get(st.params)))
    from svlm_jax.train.checkpoint import TrainCheckpointer

    ck = TrainCheckpointer(os.path.join(cfg.out, "checkpoints"), every=1)
    assert ck.latest_step == 2
    state, _ = ck.restore(tr.abstract_state, None)
    for (path, a), (_, b) in zip(_leaves(state.params), _leaves(seen[2])):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    ck.close()


_MULTI_DEVICE = textwrap.dedent("""
    import jax, numpy as np
    from svlm_jax import init_params
    from svlm_jax.train.optim import OptimConfig
    from svlm_jax.train.sharding import make_mesh, shard_batch
    from svlm_jax.train.step import StepConfig, Trainer
    from tests.test_train import CFG as cfg, make_batches
    assert jax.device_count() == 8, jax.devices()
    params = init_params(cfg, jax.random.key(0))
    batches = make_batches(2, rows=8, seed=5)
    ocfg = OptimConfig(lr=1e-3, total_steps=4, accum_steps=2, frozen=())
    out = {}
    for name, mesh in (("one", make_mesh(devices=jax.devices()[:1])), ("eight", make_mesh(data=2, fsdp=4))):
        tr = Trainer(cfg, ocfg, mesh, params, StepConfig(remat=True))
        state = tr.init(params)
        if name == "eight":  # parameters and Adam moments really are split over the fsdp axis
            emb = state.params["text"]["embed_tokens"]["embedding"]
            assert len(emb.sharding.device_set) == 8 and emb.addressable_shards[0].data.shape[0] == 256
        losses = []
        for b in batches:
            state, m = tr.train_step(state, shard_batch(b, mesh))
            losses.append(float(m["loss_sum"]) / float(m["tokens"]))
        out[name] = (losses, jax.device_get(state.params))
    (l1, p1), (l8, p8) = out["one"], out["eight"]
    np.testing.assert_allclose(l1, l8, atol=1e-5, rtol=0)
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p8)))
    assert worst < 1e-5, worst
    print("OK", l1, worst)
""")


@pytest.mark.slow
def test_train_step_on_one_device_equals_eight_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", _MULTI_DEVICE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "OK" in proc.stdout
