"""Small helpers shared by the benchmarks: the machine, side-by-side timing, printing, docs/benchmarks.md.

Every figure is a ratio of two sides timed in one run, alternating the sides (A B, B A, A B …) so that
load from other processes on a shared machine falls on both sides alike; medians, never means.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
DOCS_TITLE = (
    "# Benchmarks\n\nEach `## ` section is written by one benchmark (`python -m bench.NAME`) "
    "and replaced when it runs again.\n"
)


# --- the machine -------------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def load_average() -> str:
    """The 1-minute load average, to show how shared the machine was."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    import platform

    info = {"cpus (nproc)": str(os.cpu_count()), "cpu": cpu_model(), "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load average (1 min, at start)": load_average()}
    try:
        import torch

        info["torch"] = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        pass
    return info


def registry_command() -> list[str]:
    """The real `registry` CLI of this environment: its console script, else `python -m registry.cli`."""
    script = Path(sys.executable).with_name("registry")
    return [str(script)] if script.exists() else [sys.executable, "-m", "registry.cli"]


def offline_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: no hub access, no REGISTRY_* overrides of --home, plus `extra`.

    PYTHONDONTWRITEBYTECODE is dropped so that the repository's modules get their .pyc files on the warm-up
    runs, as on a user's machine; otherwise every run would compile them again.
    """
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("REGISTRY_") and key != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **extra}


def command_line() -> str:
    """The exact command that is running, as a user would type it from the repository root."""
    module = sys.modules["__main__"].__spec__
    head = ["python", "-m", module.name] if module is not None else ["python", sys.argv[0]]
    return shlex.join(head + sys.argv[1:])


# --- timing ------------------------------------------------------------------------------------

def interleave(sides: dict, repeats: int, *, warmup: int = 1) -> dict:
    """Seconds of each side (a dict of name: callable), `repeats` times, the order reversed every round."""
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            started = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - started)
    return times


def timed_run(argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
              ) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run a command capturing its output; its wall seconds and CPU seconds (user + system, its children included)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(list(argv), capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done, wall, cpu


def run_command(argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    """Run a command with its output discarded (as hyperfine does); raise with its stderr if it fails."""
    done = subprocess.run(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd)
    if done.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(argv)} exited {done.returncode}: {done.stderr.decode(errors='replace')[-2000:]}"
        )


def time_commands(commands: dict, runs: int, *, warmup: int = 2, env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> dict:
    """Hyperfine-style wall times of whole commands (a dict of name: argv), interleaved; `warmup` untimed runs first."""
    return interleave(
        {name: (lambda argv=argv: run_command(argv, env=env, cwd=cwd)) for name, argv in commands.items()},
        runs,
        warmup=warmup,
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """Median with min–max, in the unit that reads best."""
    low, mid, high = min(values), median(values), max(values)
    if high < 1:
        return f"{mid * 1e3:.1f} ms ({low * 1e3:.1f}–{high * 1e3:.1f})"
    return f"{mid:.2f} s ({low:.2f}–{high:.2f})"


def verdict(ratio: float, goal: float) -> str:
    return f"met (≤ {goal:g})" if ratio <= goal else f"missed (goal ≤ {goal:g})"


# --- reporting ---------------------------------------------------------------------------------

def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_lines(info: dict[str, str]) -> str:
    return "\n".join(f"- {key}: {value}" for key, value in info.items())


def section(heading: str, *, command: str, info: dict[str, str], body: str) -> str:
    """A whole `## ` section: heading, command, machine, then the benchmark's own text."""
    return (f"## {heading}\n\nCommand (from the repository root):\n\n```\n{command}\n```\n\n"
            f"Machine:\n\n{machine_lines(info)}\n\n{body.strip()}\n")


def update_docs(heading: str, text: str, path: Path = DOCS) -> None:
    """Put `text` (a section starting `## heading`) into the docs, replacing the section of that heading.

    Other sections are left as they are; an exclusive lock keeps writers of other sections from racing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        current = handle.read() or DOCS_TITLE
        pattern = re.compile(rf"^## {re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
        block = text.rstrip("\n") + "\n\n"
        if pattern.search(current):
            updated = pattern.sub(lambda _: block, current, count=1)
        else:
            updated = current.rstrip("\n") + "\n\n" + block
        handle.seek(0)
        handle.truncate()
        handle.write(updated.rstrip("\n") + "\n")


def publish(heading: str, body: str, *, info: dict[str, str], write: bool) -> None:
    """Print the section; write it into docs/benchmarks.md when `write`."""
    text = section(heading, command=command_line(), info=info, body=body)
    print("\n" + text)
    if write:
        update_docs(heading, text)
        print(f"(section '## {heading}' written to {DOCS.relative_to(REPO)})")
    else:
        print("(quick run: docs/benchmarks.md left as it is; pass --docs to write it)")


def add_docs_options(parser) -> None:
    """--quick / --docs / --no-docs, the same in every benchmark."""
    parser.add_argument(
        "--quick", action="store_true", help="Small sizes, to check the benchmark runs (docs not written)."
    )
    parser.add_argument(
        "--docs", dest="docs", action="store_true", default=None, help="Write docs/benchmarks.md even with --quick."
    )
    parser.add_argument("--no-docs", dest="docs", action="store_false", help="Only print the figures.")


def write_docs(args) -> bool:
    return (not args.quick) if args.docs is None else args.docs
