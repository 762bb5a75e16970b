"""What loading a local data file costs now that `datasets` is imported only for `hf:` sources.

    python -m bench.data_import            # 15 runs a side, writes docs/benchmarks.md
    python -m bench.data_import --quick    # 3 runs a side, docs left alone

Two fresh processes, timed side by side (alternated): `data.load` of a 2,000-row TSV as the registry
does it now (splits held as pyarrow tables), and the same plus `import datasets`, which every load paid
before (its splits were `datasets.Dataset`s). The difference is the import time saved per add-task/eval.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.common import (REPO, add_docs_options, interleave, machine, markdown_table, median, offline_env, publish,
                          run_command, spread, write_docs)

HEADING = "Loading a local data file without `datasets`"


def write_data(path: Path, rows: int) -> Path:
    words = "good great love very bad awful hate not the a this movie".split()
    lines = [f"{' '.join(words[(i * 7 + j) % len(words)] for j in range(8))}\t{i % 2}" for i in range(rows)]
    path.write_text("sentence\tlabel\n" + "\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.data_import", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, help="Runs a side (default 15, --quick 3).")
    add_docs_options(parser)
    args = parser.parse_args(argv)
    runs = args.runs or (3 if args.quick else 15)
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_data(Path(tmp) / "train.tsv", 2000)
        load = f"from registry.data import splits as data; data.load({str(path)!r})"
        check = "import sys; assert 'datasets' not in sys.modules"
        sides = {
            "now: `data.load(train.tsv)`": [sys.executable, "-c", f"{load}; {check}"],
            "before: the same + `import datasets`": [sys.executable, "-c", f"{load}; import datasets"],
        }
        env = offline_env()
        times = interleave(
            {name: (lambda argv=argv: run_command(argv, env=env, cwd=REPO)) for name, argv in sides.items()},
            runs,
            warmup=1,
        )
    now, before = (times[name] for name in sides)
    saved = median(before) - median(now)
    body = markdown_table([f"process (fresh, {runs} runs a side, alternated)", "wall time (median, min–max)"],
                          [(name, spread(times[name])) for name in sides])
    body += (f"\n\nSaved per load of a local file: **{saved * 1e3:.0f} ms** (median difference; ratio now/before "
             f"{median(now) / median(before):.2f}). `hf:` sources still import `datasets`; "
             "tests/test_data.py checks that a local file does not.\n")
    publish(HEADING, body, info=info, write=write_docs(args))
    return {"saved_s": saved}


if __name__ == "__main__":
    main()
