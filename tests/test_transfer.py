"""Forward transfer on both dialects: `add-task --init-from TASK|auto|none`, `--compare-scratch` and FWT in
`history --matrix`, the source left byte-identical, `--no-base-dropout`. Real training on the tiny BERT."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_tensors
from torch import nn

from registry.errors import ArtifactError
from registry.storage.core import open_registry
from registry.training import selection, transfer
from tests.helpers import one_line_error, sentiment_rows, snapshot, write_task_data, write_tsv


@pytest.fixture
def data(run_cli, tiny_base, tmp_path):
    """A registry holding task `a` (sentiment, adapter size 64), and the tiny tasks' data."""
    assert run_cli("init", "--base", str(tiny_base)).exit_code == 0
    root = write_task_data(tmp_path / "data")
    add(run_cli, "a", root / "sentiment", "--epochs", "3", "--lr", "3e-3")
    return root


def add(run_cli, name: str, data, *extra: str) -> tuple[dict, str]:
    """Add a task; its row and what it said on stderr (the inferred settings, auto's choice)."""
    result = run_cli("add-task", name, "--data", str(data), "--batch-size", "16", "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def shown(run_cli, name: str) -> dict:
    return json.loads(run_cli("show", name, "--json").stdout)


def stored(settings, sha: str) -> dict:
    return load_tensors(open_registry(settings).store.get(sha))


def test_init_from_a_task_starts_from_its_adapters_and_leaves_it_byte_identical(settings, run_cli, data):
    a = shown(run_cli, "a")
    files = {sha: open_registry(settings).store.get(sha) for sha in (a["adapter_sha256"], a["config_sha256"])}

    # a learning rate too small to move anything: the stored adapters are where the run started
    add(run_cli, "b", data / "sentiment", "--init-from", "a", "--epochs", "1", "--lr", "1e-9")
    add(run_cli, "fresh", data / "sentiment", "--epochs", "1", "--lr", "1e-9")
    source, b, fresh = (stored(settings, shown(run_cli, name)["adapter_sha256"]) for name in ("a", "b", "fresh"))
    body = [key for key in source if not key.startswith("head.")]
    assert body and all(np.allclose(b[key], source[key], atol=1e-6) for key in body)
    assert max(float((fresh[key] - source[key]).abs().max()) for key in body) > 1e-3  # scratch is elsewhere
    assert np.allclose(b["head.weight"], fresh["head.weight"], atol=1e-6)  # the head is new, as from scratch

    run = shown(run_cli, "b")["runs"][0]
    assert run["init_from"] == {"task": "a", "version": 1, "adapter_sha256": a["adapter_sha256"]}
    assert run["selection"] == {"requested": "a", "chosen": "a"}
    assert shown(run_cli, "fresh")["runs"][0]["init_from"] is None
    # the source: its files, its row and its score on its validation data are unchanged (BWT exactly 0)
    assert {sha: open_registry(settings).store.get(sha) for sha in files} == files
    after = shown(run_cli, "a")
    assert {k: after[k] for k in ("adapter_sha256", "score", "version", "position")} == {
        k: a[k] for k in ("adapter_sha256", "score", "version", "position")}
    assert json.loads(run_cli("eval", "a", "--json", "--quiet").stdout)["score"] == a["score"]
    for command in ("runs", "show"):  # the tables say where each run started
        assert "a v1" in run_cli(command, "b").stdout and "scratch" in run_cli(command, "fresh").stdout


def gaussian_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, F F^T / alpha + I / beta) per row: the evidence computed the slow, obvious way."""
    n = len(y)
    cov = f @ f.T / alpha + np.eye(n) / beta
    _, log_det = np.linalg.slogdet(cov)
    return float(-(n * np.log(2 * np.pi) + log_det + y @ np.linalg.solve(cov, y)) / 2 / n)


@pytest.mark.parametrize("shape", [(200, 20), (40, 120)])  # more rows than features, and fewer
def test_logme_maximises_the_evidence_of_the_bayesian_linear_model(shape):
    rng = np.random.default_rng(0)
    f = rng.normal(size=shape)
    y = f @ rng.normal(size=shape[1]) * 0.3 + rng.normal(size=shape[0])
    found = selection.evidence(f, y)
    assert found.value == pytest.approx(gaussian_log_evidence(f, y, found.alpha, found.beta), abs=1e-8)
    if shape[0] > shape[1]:  # the noise is identifiable: a maximum, any step away lowers the evidence
        for alpha, beta in ((1.1, 1), (0.9, 1), (1, 1.1), (1, 0.9)):
            assert gaussian_log_evidence(f, y, found.alpha * alpha, found.beta * beta) < found.value


def test_logme_prefers_features_that_explain_the_targets():
    rng = np.random.default_rng(1)
    signal, noise = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    values = signal @ rng.normal(size=16) + 0.1 * rng.normal(size=300)
    assert selection.logme(signal, values, "regression") > selection.logme(noise, values, "regression") + 1
    classes = (signal[:, 0] > 0).astype(int) + (signal[:, 1] > 0)  # three classes read off two features
    assert selection.logme(signal, classes, "classification") > selection.logme(noise, classes, "classification")


def test_the_trial_probe_fits_a_head_that_reads_what_the_features_hold(monkeypatch):
    """The probe's head scores well on held-out rows exactly when the features carry the targets (spread over every
    feature, as an encoder's are), and no better than chance on features that do not."""
    rng = np.random.default_rng(2)
    latent = rng.normal(size=(240, 3))
    signal = latent @ rng.normal(size=(3, 64)) + 0.5 * rng.normal(size=(240, 64))
    noise = rng.normal(size=(240, 64))
    classes = latent.argmax(axis=1)  # three classes
    fit, held = slice(0, 120), slice(120, None)

    def score(features, targets, task_type):
        outputs = selection.probe(features[fit], targets[fit], features[held], task_type, 3)
        return selection.trial_score(outputs, targets[held], task_type)

    assert score(signal, classes, "classification") > -0.5 and score(noise, classes, "classification") < -1.0  # ~ln 3
    values = latent @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=240)
    assert score(signal, values, "regression") > 0.95 and abs(score(noise, values, "regression")) < 0.3
    assert selection.probe(signal[fit], classes[fit], signal[held], "classification", 3).shape == (120, 3)
    # out of fold: every row scored by a head fitted without it, so a row's own label cannot move its output
    flipped = classes.copy()
    flipped[0] = (classes[0] + 1) % 3
    oof = [selection.out_of_fold(signal, labels, "classification", 3, seed=0) for labels in (classes, flipped)]
    assert oof[0].shape == (240, 3) and np.array_equal(oof[0][0], oof[1][0]) and not np.array_equal(oof[0], oof[1])
    assert selection.trial_score(oof[0], classes, "classification") > -0.5
    monkeypatch.setattr(selection, "PENALTY", 1e6)  # weights held at zero: the bias learns the classes' shares
    shares = np.bincount(classes[fit]) / 120
    assert score(signal, classes, "classification") == pytest.approx(np.log(shares[classes[held]]).mean(), abs=1e-3)


def test_the_guard_counts_paired_bootstrap_wins():
    labels = np.array([0, 1] * 50)
    sure = np.stack([1 - labels, labels], axis=1) * 4.0  # confident and right on every row
    assert selection.wins(sure, np.zeros((100, 2)), labels, "classification", seed=0) == 1.0
    assert selection.wins(np.zeros((100, 2)), np.zeros((100, 2)), labels, "classification", seed=0) == 0.0
    values = np.linspace(0, 1, 100)
    noisy = values + np.random.default_rng(0).normal(scale=0.5, size=100)
    assert selection.wins(values[:, None], noisy[:, None], values, "regression", seed=0) == 1.0


def selection_of(run_cli, name: str) -> dict:
    return shown(run_cli, name)["runs"][0]["selection"]


def test_auto_ranks_shortlists_trials_and_guards_by_spearman_for_regression(settings, run_cli, data):
    add(run_cli, "small", data / "pairs", "--epochs", "1", "--adapter-size", "16")
    _, stderr = add(run_cli, "sim", data / "similarity", "--epochs", "2", "--init-from", "auto", "--compare-scratch")
    runs = shown(run_cli, "sim")["runs"]
    chosen = runs[0]["selection"]
    assert [r["task"] for r in chosen["similarity"]] == ["a"] and chosen["shortlist"] == ["a"]
    assert chosen["logme"] == [] and chosen["unranked"] == []  # every earlier task has an embedding: no LogME
    assert chosen["skipped"] == [{"task": "small", "why": "adapters of size 16, this run's 64"}]
    assert chosen["criterion"] == "spearman" and chosen["rows"] == 48 and chosen["folds"] == 4
    assert chosen["embedding_rows"] == 48
    assert [t["task"] for t in chosen["trials"]] == [None, "a"] and all(-1 <= t["spearman"] <= 1
                                                                         for t in chosen["trials"])
    guard = chosen["guard"]
    assert guard["best"] == "a" and chosen["chosen"] == ("a" if guard["wins"] >= selection.CONFIDENCE else None)
    assert guard["fired"] == (chosen["chosen"] is None and chosen["trials"][1]["spearman"] >
                              chosen["trials"][0]["spearman"])
    block = [line for line in stderr.splitlines() if "auto" in line or line.startswith("  ")]
    assert block[0] == "--init-from auto: skipped small (adapters of size 16, this run's 64)"
    assert block[1].startswith("--init-from auto: text similarity of 1 earlier task (48 training rows embedded) in ")
    assert block[2].startswith("  shortlist (k=3, one per kind of data): a; trials, out-of-fold spearman of a head "
                               "fitted on each start's features of 48 rows (4 folds): none ")
    assert block[3].startswith(f"  → {chosen['chosen'] or 'none'} (a beats none in ")
    starts = [run["init_from"]["task"] if run["init_from"] else None for run in runs]
    assert starts == (["a", None] if chosen["chosen"] else [None])  # --compare-scratch: scratch beside a source


def test_auto_with_many_candidates_trials_only_the_shortlist(settings, run_cli, data):
    for name, lr in (("b", "1e-3"), ("c", "3e-4"), ("d", "1e-2")):
        add(run_cli, name, data / "sentiment", "--epochs", "1", "--lr", lr)
    _, stderr = add(run_cli, "e", data / "sentiment", "--epochs", "1", "--init-from", "auto", "--shortlist", "2")
    chosen = selection_of(run_cli, "e")
    ranking = [r["task"] for r in chosen["similarity"]]
    assert sorted(ranking) == ["a", "b", "c", "d"]
    assert [r["cosine"] for r in chosen["similarity"]] == sorted((r["cosine"] for r in chosen["similarity"]),
                                                                 reverse=True)
    scores = {name: shown(run_cli, name)["score"] for name in ranking}
    best = max(ranking, key=scores.get)  # the same texts, one kind of data: its best-scoring task stands for it
    assert chosen["shortlist"] == [best, next(name for name in ranking if name != best)] and chosen["k"] == 2
    assert [t["task"] for t in chosen["trials"]] == [None, *chosen["shortlist"]]  # two trials and none's, no more
    assert chosen["criterion"] == "loss" and all(t["loss"] > 0 for t in chosen["trials"])
    assert "similarity of 4 earlier tasks" in stderr and "shortlist (k=2, one per kind of data)" in stderr


def test_an_unusable_candidate_is_skipped_with_one_line(settings, run_cli, data):
    add(run_cli, "b", data / "sentiment", "--epochs", "1")
    registry = open_registry(settings)
    sha = shown(run_cli, "a")["adapter_sha256"]
    registry.store.fs.pipe_file(registry.store.path(sha), b"not the adapter")  # a's stored weights break
    _, stderr = add(run_cli, "c", data / "sentiment", "--epochs", "1", "--init-from", "auto")
    skipped = [line for line in stderr.splitlines() if "skipped a" in line]
    assert skipped == [f"--init-from auto: skipped a (artifact {sha[:12]} in {registry.store.url} does not match "
                       "its sha256 (corrupt or tampered): run `registry verify`)"]
    chosen = selection_of(run_cli, "c")
    assert chosen["shortlist"] == ["a", "b"]  # ranked by their embeddings; a's adapters fail at its trial
    assert [t["task"] for t in chosen["trials"]] == [None, "b"] and chosen["skipped"][0]["task"] == "a"


def test_auto_picks_a_start_that_already_knows_the_task_unless_the_guard_holds(settings, run_cli, data, tmp_path,
                                                                                 monkeypatch):
    """`teacher` learned this very data: it ranks first, and the head fitted on its features beats the one fitted on
    a fresh start's on every resample of the trial rows."""
    reviews = tmp_path / "reviews"
    for split, n, seed in (("train", 200, 5), ("dev", 40, 6)):
        write_tsv(reviews / f"{split}.tsv", ["sentence", "label"], sentiment_rows(n, seed))
    teacher, _ = add(run_cli, "teacher", reviews, "--epochs", "10", "--lr", "3e-3", "--batch-size", "8")
    assert teacher["score"] >= 0.8
    add(run_cli, "again", reviews, "--epochs", "1", "--init-from", "auto")
    (run,) = shown(run_cli, "again")["runs"]
    chosen = run["selection"]
    assert chosen["shortlist"][0] == "teacher"  # the same texts: the most similar
    assert chosen["rows"] == transfer.MIN_TRIAL_ROWS  # a quarter of one epoch's 200 rows, twice over, split in 2
    losses = {t["task"]: t["loss"] for t in chosen["trials"]}
    assert losses["teacher"] < losses[None] and chosen["guard"] == {
        "best": "teacher", "wins": 1.0, "needed": selection.CONFIDENCE, "fired": False}
    assert chosen["chosen"] == "teacher" and run["init_from"]["task"] == "teacher"

    monkeypatch.setattr(selection, "CONFIDENCE", 1.01)  # no win is enough: the guard keeps none
    _, stderr = add(run_cli, "kept", reviews, "--epochs", "1", "--init-from", "auto")
    (run,) = shown(run_cli, "kept")["runs"]
    assert run["selection"]["guard"]["fired"] is True and run["selection"]["chosen"] is None
    assert run["init_from"] is None and "beats none in 100% of 200 resamples of the trial rows; needs 101%)" in stderr


def test_compare_scratch_gives_the_forward_transfer_and_the_better_run_is_published(settings, run_cli, data,
                                                                                      monkeypatch):
    monkeypatch.setattr(selection, "CONFIDENCE", 0.0)  # any shortlisted task beats none: auto must pick `a`
def test_a_new_version_and_a_sweep_start_from_the_task_itself(settings, run_cli, data):
    add(run_cli, "a", data / "sentiment", "--new-version", "--init-from", "a", "--sweep", "--epochs", "1")
    runs = shown(run_cli, "a")["runs"][1:]
    # a source fixes the adapter size: the sweep is over the learning rates only
    assert [(r["hyperparams"]["lr"], r["hyperparams"]["adapter_size"]) for r in runs] == [
        (3e-4, 64), (1e-3, 64), (3e-3, 64)]
    assert {(r["init_from"]["task"], r["init_from"]["version"]) for r in runs} == {("a", 1)}


@pytest.mark.parametrize(("args", "message"), [
    (["--init-from", "nosuch"], "Error: no ready task named 'nosuch'; known tasks: a"),
    (["--init-from", "a", "--adapter-size", "16"],
     "Error: --init-from a: its adapters have size 64, this run's 16: pass --adapter-size 64"),
    (["--compare-scratch"],
     "Error: --compare-scratch needs --init-from auto or TASK (the run is already from scratch)"),
    (["--init-from", "a", "--shortlist", "2"],
     "Error: --shortlist needs --init-from auto (only auto's ranking has a shortlist)"),
])
def test_bad_init_from_is_one_line_and_changes_nothing(settings, run_cli, data, args, message):
    before = snapshot(settings)
    result = run_cli("add-task", "b", "--data", str(data / "sentiment"), *args)
    line = one_line_error(result, exit_code=2 if "needs --init-from" in message else 1)
    assert line == message or line.startswith(f"{message} (see `")  # a usage error points at --help
    assert snapshot(settings) == before


def test_a_retired_task_is_no_source(settings, run_cli, data):
    assert run_cli("retire", "a").exit_code == 0
    before = snapshot(settings)
    result = run_cli("add-task", "b", "--data", str(data / "sentiment"), "--init-from", "a")
    assert one_line_error(result) == "Error: task 'a' is retired: `registry restore a` brings it back"
    assert snapshot(settings) == before
    _, stderr = add(run_cli, "c", data / "sentiment", "--epochs", "1", "--init-from", "auto")
    assert "no usable earlier task with adapters of this size" in stderr  # nor a candidate of auto


def test_the_base_dropout_is_off_unless_asked_and_the_run_says_so(settings, run_cli, data, tiny_base):
    from registry.training.tasks import build_model

    add(run_cli, "b", data / "sentiment", "--epochs", "1", "--base-dropout")
    assert shown(run_cli, "b")["runs"][0]["hyperparams"]["base_dropout"] is True
    assert shown(run_cli, "a")["runs"][0]["hyperparams"]["base_dropout"] is False  # the default
    off = build_model(tiny_base, 8, 2, 0)
    on = build_model(tiny_base, 8, 2, 0, base_dropout=True)
    assert {m.p for m in off.modules() if isinstance(m, nn.Dropout)} == {0.0}
    assert off.encoder.config.attention_probs_dropout_prob == 0.0
    assert max(m.p for m in on.modules() if isinstance(m, nn.Dropout)) > 0


# --- the text embedding auto ranks by ------------------------------------------------------------


def embedding_row(settings, name: str) -> tuple[str | None, str | None]:
    """The current version's embedding sha256 of task `name`, and that artifact's kind."""
    from sqlalchemy import and_, select

    from registry.storage.schema import artifacts, task_versions, tasks

    current = and_(task_versions.c.task_id == tasks.c.id, task_versions.c.version == tasks.c.current_version)
    query = (select(task_versions.c.embedding_sha256, artifacts.c.kind).select_from(tasks)
             .join(task_versions, current).outerjoin(artifacts, artifacts.c.sha256 == task_versions.c.embedding_sha256)
             .where(tasks.c.name == name))
    with open_registry(settings).query() as connection:
        return tuple(connection.execute(query).one())


def test_add_task_stores_the_text_embedding_of_its_training_rows_through_the_base(settings, run_cli, data,
                                                                                  tiny_base):
    from registry.data import splits
    from registry.training import embedding
    from registry.training.tasks import encode_split, load_tokenizer

    sha, kind = embedding_row(settings, "a")
    registry = open_registry(settings)
    stored = registry.store.get(sha)  # verified: it hashes to its name
    assert kind == embedding.KIND and hashlib.sha256(stored).hexdigest() == sha
    vector = embedding.from_bytes(stored, 32)
    assert 0.5 < np.linalg.norm(vector) <= 1 + 1e-6  # a mean of unit vectors that point roughly alike

    # the same vector again: the frozen base alone (no adapters) on the task's seeded training rows
    with registry.read() as session:
        base = registry.base(session)
    loaded = splits.load(str(data / "sentiment"), seed=0)
    tokenizer = load_tokenizer(tiny_base)
    train_set = encode_split(registry, base, tokenizer, loaded, "train", 128, False)
    again = embedding.of_task(tiny_base, train_set, 0, pad_id=tokenizer.pad_token_id, device=torch.device("cpu"))
    assert np.allclose(vector, again, atol=1e-6)
    assert embedding.similarity(vector, again) == pytest.approx(1.0)

    with pytest.raises(ArtifactError, match="not one finite vector of 16 values"):
        embedding.from_bytes(stored, 16)


def test_similarity_is_centred_on_the_registry_so_a_shared_part_does_not_rank():
    """Every embedding leans the same way (any text through the base); what sets reviews apart is small. The plain
    cosine ranks the plainest text first; centred on the mean, reviews come first."""
    from registry.training import embedding

    new = np.array([1.0, 0.4, 0.0, 0.0])  # a review set: the shared direction plus some "reviews"
    earlier = [np.array([0.5, 0.5, 0.0, 0.0]), np.array([1.0, 0.05, 0.0, 0.1]),  # reviews, plain single sentences
               np.array([0.8, 0.0, 0.5, 0.0]), np.array([0.8, 0.0, 0.0, 0.5])]  # sentence pairs, something else
    reviews, plain = earlier[:2]
    plain_cosines = [embedding.similarity(new, e) for e in earlier]
    assert max(plain_cosines) == plain_cosines[1]  # the plain cosine puts the plain texts first
    centred = embedding.centred_similarities(new, earlier)
    assert max(centred) == centred[0] and centred[1] > max(centred[2:])
    centre = np.mean([new, *earlier], axis=0)
    assert centred[0] == pytest.approx(embedding.similarity(new - centre, reviews - centre))
    # with one earlier task there is nothing to centre on: the plain cosine
    assert embedding.centred_similarities(new, [plain]) == [pytest.approx(plain_cosines[1])]


def test_the_shortlist_takes_one_task_per_kind_of_data():
    """Two tasks of one data set (embeddings alike within its samples' noise) take one place, the better-scoring
    one: the next kind gets the other, and a place no other kind fills goes back to the one that waited."""
    from registry.training import embedding

    rng = np.random.default_rng(4)
    kinds = rng.normal(size=(4, 32))  # reviews, pairs, questions, and the new task's own (near reviews)
    new = kinds[3] + 0.8 * kinds[0]
    reviews = [kinds[0] + 0.05 * rng.normal(size=32) for _ in range(2)]  # one data set, two samples
    earlier = [reviews[0], kinds[1], reviews[1], kinds[2] - kinds[0]]
    centred = embedding.centred_similarities(new, earlier)
    assert centred[0] > centred[1] and centred[2] > centred[1]  # both reviews rank above pairs
    assert embedding.similarity(*embedding.centred(new, reviews + [kinds[1]])[1][:2]) >= embedding.SAME_DATA
    for better in (0, 2):  # the review task that scored better stands for both, then pairs
        quality = [0.9 if i == better else 0.8 for i in range(4)]
        assert embedding.shortlist(new, earlier, 2, quality) == [better, 1]
        assert embedding.shortlist(new, earlier, 3, quality) == [better, 1, 3]
    assert sorted(embedding.shortlist(new, earlier[:3], 3, [0.5] * 3)) == [0, 1, 2]  # no third kind: both reviews


def test_one_model_serves_every_trial_and_run_and_trains_as_a_new_one(settings, run_cli, data, tiny_base):
    """add-task builds each model once (tasks.Models): auto's trials and the runs take it put back as built. A trial
    after another one (which loaded `a`'s adapters into it), and a run with the base's dropout (which draws from
    torch's generator) after that, give the very outputs and weights they give on models just built."""
    from registry.data import splits
    from registry.formats import head_size
    from registry.training import train
    from registry.training.tasks import Models, build_model, encode_split, load_tokenizer

    registry = open_registry(settings)
    with registry.read() as session:
        base = registry.base(session)
    loaded = splits.load(str(data / "sentiment"), seed=0)
    tokenizer = load_tokenizer(tiny_base)
    train_set = encode_split(registry, base, tokenizer, loaded, "train", 128, False)
    rows, cpu = transfer.trial_rows(train_set, 0, 32), torch.device("cpu")
    config = train.TrainConfig(epochs=2, seed=3, batch_size=16, base_dropout=True)
    outputs = head_size(loaded.task_type, loaded.labels)
    models = Models(tiny_base, outputs)
    source = transfer.candidates(registry)[0]  # `a`

    def trial(model, start):
        return transfer.trial(registry, model, start, rows, task_type=loaded.task_type, pad_id=tokenizer.pad_token_id,
                              device=cpu, seed=0)

    def run(model):
        return train.fit(model, train_set, train_set, config, task_type=loaded.task_type, metric=loaded.metric,
                         pad_id=tokenizer.pad_token_id, device=cpu).best_state

    first, again = trial(models.fresh(config), source), trial(models.fresh(config), None)
    trained = run(models.fresh(config))
    assert models.fresh(config) is models.fresh(config) and len(models.built) == 1 and first.score != again.score
    fresh = [trial(build_model(tiny_base, 64, outputs, 3, base_dropout=True), start) for start in (None, source)]
    assert np.array_equal(again.outputs, fresh[0].outputs) and np.array_equal(first.outputs, fresh[1].outputs)
    anew = run(build_model(tiny_base, 64, outputs, 3, base_dropout=True))
    assert all(torch.equal(trained[key], anew[key]) for key in anew)
    model = models.fresh(config)
    torch.rand(1)  # one draw more from the generator: other dropout masks, other weights (the check can fail)
    shifted = run(model)
    assert not all(torch.equal(trained[key], shifted[key]) for key in anew)


def test_a_broken_embedding_is_skipped_with_one_line(settings, run_cli, data):
    add(run_cli, "b", data / "pairs", "--epochs", "1")  # other texts: another embedding (the same would share its file)
    registry = open_registry(settings)
    sha, _ = embedding_row(settings, "a")
    registry.store.fs.pipe_file(registry.store.path(sha), b"not the embedding")
    # other texts again: publishing the same embedding would write a good copy over the broken file
    _, stderr = add(run_cli, "c", data / "similarity", "--epochs", "1", "--init-from", "auto")
    skipped = [line for line in stderr.splitlines() if "skipped a" in line]
    assert skipped == [f"--init-from auto: skipped a (artifact {sha[:12]} in {registry.store.url} does not match "
                       "its sha256 (corrupt or tampered): run `registry verify`)"]
    chosen = selection_of(run_cli, "c")
    assert [r["task"] for r in chosen["similarity"]] == ["b"] and chosen["shortlist"] == ["b"]
    assert f"artifact {sha[:12]} (text embedding of 'a' version 1" in run_cli("verify").output


class Passes:
    """Counts the forward passes of the base (BertModel.forward) and LogME's rankings (one per candidate)."""

    def __init__(self, monkeypatch):
        from transformers.models.bert import modeling_bert

        self.base = self.logme = 0
        forward, logme = modeling_bert.BertModel.forward, selection.logme

        def counted_forward(*args, **kwargs):
            self.base += 1
            return forward(*args, **kwargs)

        def counted_logme(*args, **kwargs):
            self.logme += 1
            return logme(*args, **kwargs)

        monkeypatch.setattr(modeling_bert.BertModel, "forward", counted_forward)
        monkeypatch.setattr(selection, "logme", counted_logme)

    def of(self, run) -> tuple[int, int]:
        """The passes `run()` makes."""
        before = (self.base, self.logme)
        run()
        return self.base - before[0], self.logme - before[1]


def test_auto_makes_as_many_forward_passes_with_six_earlier_tasks_as_with_three(settings, run_cli, data,
                                                                               monkeypatch):
    passes = Passes(monkeypatch)
    for name in ("b", "c"):
        add(run_cli, name, data / "sentiment", "--epochs", "1")
    auto = ["--epochs", "1", "--init-from", "auto", "--shortlist", "3"]
    scratch_passes = passes.of(lambda: add(run_cli, "scratch3", data / "sentiment", "--epochs", "1"))
    assert run_cli("retire", "scratch3").exit_code == 0  # no candidate of the next
    with_three = passes.of(lambda: add(run_cli, "new3", data / "sentiment", *auto))
    assert run_cli("retire", "new3").exit_code == 0
    for name in ("d", "e", "f"):
        add(run_cli, name, data / "sentiment", "--epochs", "1")
    with_six = passes.of(lambda: add(run_cli, "new6", data / "sentiment", *auto))
    assert with_three == with_six and with_six[1] == 0  # no LogME: every earlier task has an embedding
    assert len(selection_of(run_cli, "new3")["similarity"]) == 3 and len(selection_of(run_cli, "new6")[
        "similarity"]) == 6
    assert [len(selection_of(run_cli, name)["trials"]) for name in ("new3", "new6")] == [4, 4]
    assert with_six[0] > scratch_passes[0]  # the trials' passes: k + 1 short trials, whatever the registry holds


def test_earlier_tasks_without_an_embedding_get_logme_for_a_bounded_few(settings, run_cli, data, monkeypatch):
    from sqlalchemy import update

    from registry.storage.schema import task_versions

    for name in ("b", "c", "d", "e"):
        add(run_cli, name, data / "sentiment", "--epochs", "1")
    with open_registry(settings).write() as session:  # as before revision 0005, or imported from a bundle
        session.execute(update(task_versions).values(embedding_sha256=None))
    passes = Passes(monkeypatch)
    _, logme_passes = passes.of(lambda: add(run_cli, "new", data / "sentiment", "--epochs", "1", "--init-from",
                                            "auto", "--json"))
    chosen = selection_of(run_cli, "new")
    assert transfer.FALLBACK == 3 and logme_passes == transfer.FALLBACK + 1  # the 3 latest and none's
    assert chosen["similarity"] == [] and chosen["unranked"] == ["a", "b"]
    assert sorted(r["task"] for r in chosen["logme"] if r["task"]) == ["c", "d", "e"]
    assert sorted(chosen["shortlist"]) == ["c", "d", "e"] and len(chosen["trials"]) == 4
    _, stderr = add(run_cli, "again", data / "sentiment", "--epochs", "1", "--init-from", "auto", "--shortlist", "1")
    chosen = selection_of(run_cli, "again")  # `new` has an embedding and fills the one place: no LogME
    assert [r["task"] for r in chosen["similarity"]] == ["new"] and chosen["shortlist"] == ["new"]
    assert chosen["logme"] == [] and chosen["unranked"] == ["a", "b", "c", "d", "e"]
    assert ("  without an embedding (added before schema 0005, or imported), LogME: not needed; not ranked: "
            "a, b, c, d, e") in stderr
