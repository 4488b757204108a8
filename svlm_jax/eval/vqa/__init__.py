"""Video question answering: OVO-Bench, LongVideoBench, Video-MME and MVBench, offline as the originals
score them and on the live streaming cache.

    report = read_bench("ovo", DIR)                       # readers.py: questions, missing, malformed
    with Predictions(OUT / "predictions.jsonl") as preds:  # results.py: append-only, resumable
        bad = run_offline(cfg, params, tok, "ovo", report.questions, preds)
    scores = finish("ovo", "offline", preds.done.values(), OUT, report, bad)

The command line is `python -m experiments.eval_vqa`; docs/EVALUATION.md has the commands per benchmark.
"""
from svlm_jax.eval.vqa.protocols import BENCHES, PROTOCOLS
from svlm_jax.eval.vqa.readers import read_bench
from svlm_jax.eval.vqa.records import Question, ReadReport, RecordError
from svlm_jax.eval.vqa.results import Predictions, finish
from svlm_jax.eval.vqa.run import run_offline

__all__ = ["BENCHES", "PROTOCOLS", "Question", "ReadReport", "RecordError", "read_bench", "Predictions", "finish",
           "run_offline"]
