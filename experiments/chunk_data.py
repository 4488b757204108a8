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


def main(argv=None) -> int:
    """The CLI; returns the exit code (2 with one line on stderr for bad input)."""
    from svlm_jax.errors import cli_main

    p = argparse.ArgumentParser(prog="python -m experiments.chunk_data", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="JSONL of long annotated videos")
    p.add_argument("dst", help="chunked JSONL to write (its _seeks.jsonl is written beside it)")
    p.add_argument("--window", type=int, default=24, help="sample length in seconds (the released files: 24)")
    p.add_argument("--overlap", type=int, default=12, help="overlap of consecutive samples in seconds (12)")
    p.add_argument("--min-words-per-second", type=float, default=2.0, help="drop windows with fewer words")
    p.add_argument("--force", action="store_true", help="replace an existing dst")
    args = p.parse_args(argv)
    return cli_main(lambda: _main(args), "python -m experiments.chunk_data")


def _main(args: argparse.Namespace) -> int:
    from svlm_jax.data.chunker import ChunkConfig, write_chunked_jsonl
    from svlm_jax.data.mix import seeks_path
    from svlm_jax.errors import ConfigError, DataError, check_output, need_file, user_input

    need_file(args.src, "src", "a JSONL file of annotated videos")
    check_output(args.dst, [args.src], what="dst")
    check_output(seeks_path(args.dst), [args.src], what="dst's seeks file")
    if os.path.exists(args.dst) and not args.force:
        raise ConfigError(f"{args.dst} already exists; pass --force to replace it or pick another path.")
    with user_input(ConfigError):
        cfg = ChunkConfig(window=args.window, overlap=args.overlap, min_words_per_second=args.min_words_per_second)
    with user_input(DataError):  # a src that is not UTF-8 text, a dst whose directory is missing
        n_rec, n_chunks = write_chunked_jsonl(args.src, args.dst, cfg)
    print(f"{n_rec} records -> {n_chunks} samples of {args.window} s every {args.window - args.overlap} s in {args.dst}")
    return 0


if __name__ == "__main__":
    from svlm_jax.errors import exit_cli

    exit_cli(main())
