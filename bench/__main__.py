"""`python -m bench [--quick]` (what `make bench` runs): every benchmark in sequence, each in its own process.

    python -m bench                      # all of them, full sizes (hours on 2 CPU cores: the GLUE table dominates)
    python -m bench --quick              # small sizes, to check they all run; docs/benchmarks.md untouched
    python -m bench --only step_time scale

Options after `--` go to every benchmark, e.g. `python -m bench --quick -- --docs`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench.common import REPO

BENCHMARKS = ("step_time", "scale", "adapters_lib", "glue", "cola", "bundle", "serve", "team", "transfer")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Pass --quick to every benchmark.")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="Run only these.")
    parser.add_argument("extra", nargs="*", help="Arguments for every benchmark (after --).")
    args = parser.parse_args(argv)

    failed = []
    for name in args.only or BENCHMARKS:
        module = f"bench.{name}"
        command = [sys.executable, "-m", module, *(["--quick"] if args.quick else []), *args.extra]
        print(f"== {' '.join(['python', *command[1:]])}", flush=True)
        started = time.perf_counter()
        code = subprocess.run(command, cwd=REPO).returncode
        print(f"== {module}: exit {code} after {time.perf_counter() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(module)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
