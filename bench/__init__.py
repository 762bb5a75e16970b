"""Benchmarks for issue 7: every figure is a ratio of two sides measured side by side in one run.

Run them all with `python -m bench` (or `make bench`); each module also runs alone, e.g.
`python -m bench.step_time --quick`. Results go to docs/benchmarks.md, one `## ` section each.
"""
