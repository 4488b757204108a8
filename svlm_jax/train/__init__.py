"""Training: the masked loss, the Optax optimizer, the mesh, the jitted step, checkpoints and the loop.

Modules:
  loss        the batch forward (per-row vision, spliced) and the chunked masked cross-entropy
  optim       AdamW + warmup/cosine + clipping + freezing + token-mean gradient accumulation
  sharding    the ("data", "fsdp") mesh, parameter/optimizer FSDP shardings, multi-host setup
  step        TrainState and the compiled train / eval steps
  checkpoint  Orbax checkpoints of the train state and the Grain iterator
  loop        resume, progress, eval, checkpoints, NaN stop, metrics JSONL and the loss plot
"""
