"""Entry points: demos, training, streaming, benchmarks (run with `python -m experiments.<name>`)."""
