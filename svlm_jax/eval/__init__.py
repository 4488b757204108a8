"""Benchmarks of a streaming checkpoint: commentary (Inf-Streams-Eval, LiveSports-3K-CC) and Video QA.

Each benchmark lives in its own modules (dataset readers, generation, judges, scores); thin CLIs in
`experiments/` drive them. Protocols follow the original's scripts
(docs/ORIGINAL.md §Evaluation protocols).
"""
