"""Training data: the StreamingVLM JSONL format, the overlapped chunker, samples, Grain, synthetic data.

Modules:
  format     read and validate JSONL conversations (bad records are counted and skipped)
  chunker    long annotated videos -> overlapping W-second chunks with their previous text
  sample     a chunk -> token ids, labels, M-RoPE positions and per-second vision patches; batching
  pipeline   the Grain pipeline (shuffle, worker processes, static shapes, checkpointable state)
  synthetic  a learnable synthetic commentary dataset (PyAV-encoded shapes + word timestamps)
"""
