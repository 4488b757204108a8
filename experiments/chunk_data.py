"""Cut long annotated videos into overlapping one-sample-per-line JSONL, like the released training files.

    python -m experiments.chunk_data raw.jsonl train_w24o12.jsonl --window 24 --overlap 12

The original trains on every line whole; this is the explicit step that turns long raw annotations
(one line per video) into such lines: W-second windows every W - O seconds, each with its words, its
previous text (everything said before it) and the line offsets in `{stem}_seeks.jsonl`. Video paths
are written as they are in the input, so write the output next to it or pass --video-root when
training.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.chunk_data", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="JSONL of long annotated videos")
    p.add_argument("dst", help="chunked JSONL to write (its _seeks.jsonl is written beside it)")
    p.add_argument("--window", type=int, default=24, help="sample length in seconds (the released files: 24)")
    p.add_argument("--overlap", type=int, default=12, help="overlap of consecutive samples in seconds (12)")
    p.add_argument("--min-words-per-second", type=float, default=2.0, help="drop windows with fewer words")
    p.add_argument("--force", action="store_true", help="replace an existing dst")
    args = p.parse_args(argv)
    from svlm_jax.data.chunker import ChunkConfig, write_chunked_jsonl

    if not os.path.isfile(args.src):
        print(f"error: {args.src} does not exist; pass a JSONL file of annotated videos.", file=sys.stderr)
        return 2
    if os.path.exists(args.dst) and not args.force:
        print(f"error: {args.dst} already exists; pass --force to replace it or pick another path.", file=sys.stderr)
        return 2
    try:
        cfg = ChunkConfig(window=args.window, overlap=args.overlap, min_words_per_second=args.min_words_per_second)
        n_rec, n_chunks = write_chunked_jsonl(args.src, args.dst, cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{n_rec} records -> {n_chunks} samples of {args.window} s every {args.window - args.overlap} s in {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
