"""GLUE metrics against hand-computed values, ties and degenerate inputs, and against scipy / scikit-learn (oracles)."""

import math

import numpy as np
import pytest

from registry.data import metrics


def test_every_metric_is_offered_by_the_cli_and_belongs_to_one_task_type():
    from registry.cli.train import add_task

    offered = next(p for p in add_task.params if p.name == "metric").type.choices
    assert tuple(offered) == metrics.METRICS
    assert set(metrics.CLASSIFICATION_METRICS) | set(metrics.REGRESSION_METRICS) == set(metrics.METRICS)
    assert not set(metrics.CLASSIFICATION_METRICS) & set(metrics.REGRESSION_METRICS)


@pytest.mark.parametrize(
    "metric, keys",
    [
        ("accuracy", ["accuracy"]),
        ("f1", ["f1", "accuracy"]),
        ("mcc", ["mcc", "accuracy"]),
        ("spearman", ["spearman", "pearson"]),
        ("pearson", ["pearson", "spearman"]),
    ],
)
def test_primary_metric_first_then_companions(metric, keys):
    out = metrics.compute(metric, [0, 1, 1, 0], [0, 1, 0, 0])
    assert list(out) == keys
    assert all(type(v) is float for v in out.values())


def test_accuracy():
    assert metrics.compute("accuracy", [0, 1, 2, 2], [0, 1, 1, 2]) == {"accuracy": 0.75}


def test_f1_of_positive_class_hand_computed():
    # tp = 2 (rows 0, 3), fp = 1 (row 1), fn = 1 (row 4), tn = 2 -> F1 = 2*2 / (2*2 + 1 + 1) = 2/3
    out = metrics.compute("f1", [1, 1, 0, 1, 0, 0], [1, 0, 0, 1, 1, 0])
    assert out["f1"] == pytest.approx(2 / 3)
    assert out["accuracy"] == pytest.approx(4 / 6)


def test_f1_is_of_class_one_not_class_zero():
    # class 1: tp=1, fp=0, fn=1 -> 2/3 ; class 0 would give tp=3, fp=1, fn=0 -> 6/7
    out = metrics.compute("f1", [1, 0, 0, 0, 0], [1, 1, 0, 0, 0])
    assert out["f1"] == pytest.approx(2 / 3)


def test_f1_without_any_positive_is_zero_not_nan():
    out = metrics.compute("f1", [0, 0, 0], [0, 0, 0])
    assert out == {"f1": 0.0, "accuracy": 1.0}


def test_mcc_binary_hand_computed():
    # tp=2 tn=2 fp=1 fn=1: (2*2 - 1*1) / sqrt(3*3*3*3) = 3/9
    out = metrics.compute("mcc", [1, 1, 0, 1, 0, 0], [1, 0, 0, 1, 1, 0])
    assert out["mcc"] == pytest.approx(1 / 3)
    assert out["accuracy"] == pytest.approx(4 / 6)


def test_mcc_perfect_inverted_and_constant():
    ref = [0, 1, 1, 0, 1]
    assert metrics.compute("mcc", ref, ref)["mcc"] == pytest.approx(1.0)
    assert metrics.compute("mcc", [1 - r for r in ref], ref)["mcc"] == pytest.approx(-1.0)
    const = metrics.compute("mcc", [1, 1, 1, 1, 1], ref)
    assert const["mcc"] == 0.0 and not math.isnan(const["mcc"])
    assert const["accuracy"] == pytest.approx(0.6)
    # a constant reference is degenerate too
    assert metrics.compute("mcc", [0, 1, 0, 1], [1, 1, 1, 1])["mcc"] == 0.0


def test_mcc_multiclass_hand_computed():
    # confusion (true x pred): [[2,0,0],[1,0,1],[0,1,1]]; t=(2,2,2) p=(3,1,2) c=3 s=6
    # (3*6 - (6+2+4)) / sqrt((36-14) * (36-12)) = 6 / sqrt(528)
    out = metrics.compute("mcc", [0, 2, 1, 0, 0, 2], [0, 1, 2, 0, 1, 2])
    assert out["mcc"] == pytest.approx(6 / math.sqrt(528))


def test_pearson_hand_computed():
    # dx = (-1.5,-.5,.5,1.5) dy = (-3,-1,0,4): sxy = 11, sxx = 5, syy = 26
    out = metrics.compute("pearson", [1, 2, 3, 4], [2, 4, 5, 9])
    assert out["pearson"] == pytest.approx(11 / math.sqrt(130))
    # ranks are identical -> spearman 1
    assert out["spearman"] == pytest.approx(1.0)


def test_rankdata_averages_ties():
    np.testing.assert_allclose(metrics.rankdata(np.array([10, 20, 20, 5, 20])), [2, 4, 4, 1, 4])
    np.testing.assert_allclose(metrics.rankdata(np.array([3.0, 1.0, 2.0])), [3, 1, 2])
    np.testing.assert_allclose(metrics.rankdata(np.array([7, 7, 7])), [2, 2, 2])


def test_spearman_with_ties_hand_computed():
    # ranks x = (1, 2.5, 2.5, 4), y = (1, 3, 2, 4): sxy = 4.5, sxx = 4.5, syy = 5
    out = metrics.compute("spearman", [1.0, 2.0, 2.0, 3.0], [1.0, 3.0, 2.0, 4.0])
    assert out["spearman"] == pytest.approx(4.5 / math.sqrt(22.5))
    assert list(out) == ["spearman", "pearson"]


def test_spearman_is_rank_based():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    out = metrics.compute("spearman", x, [1.0, 2.0, 3.0, 4.0, 100.0])
    assert out["spearman"] == pytest.approx(1.0)
    assert out["pearson"] < 0.8
    assert metrics.compute("spearman", x, -x)["spearman"] == pytest.approx(-1.0)


def test_constant_predictions_give_zero_correlations_not_nan():
    out = metrics.compute("spearman", [2.5, 2.5, 2.5], [1.0, 2.0, 4.0])
    assert out == {"spearman": 0.0, "pearson": 0.0}
    out = metrics.compute("pearson", [1.0, 2.0, 4.0], [3.0, 3.0, 3.0])
    assert out == {"pearson": 0.0, "spearman": 0.0}


def test_float32_and_numpy_inputs():
    """float32 predictions score as their float64 values do (scipy's oracle, in float64)."""
    from scipy import stats

    pred = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.65], dtype=np.float32)
    ref = np.array([0, 0, 1, 1, 0, 1], dtype=np.int64)
    out = metrics.compute("pearson", pred, ref)
    assert out["pearson"] == pytest.approx(stats.pearsonr(pred.astype(np.float64), ref).statistic, abs=1e-6)
    assert out["spearman"] == pytest.approx(stats.spearmanr(pred.astype(np.float64), ref).statistic, abs=1e-6)


# --------------------------------------------------------------------------------------------
# scipy and scikit-learn as oracles, on random inputs with ties and every class count


@pytest.mark.parametrize("seed", range(20))
def test_classification_metrics_match_scikit_learn(seed):
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    rng = np.random.default_rng(seed)
    n, classes = int(rng.integers(5, 200)), int(rng.integers(2, 6))
    ref = rng.integers(0, classes, size=n)
    pred = np.where(rng.random(n) < rng.random(), ref, rng.integers(0, classes, size=n))  # partly right
    assert metrics.compute("accuracy", pred, ref)["accuracy"] == pytest.approx(accuracy_score(ref, pred), abs=1e-12)
    assert metrics.compute("mcc", pred, ref)["mcc"] == pytest.approx(matthews_corrcoef(ref, pred), abs=1e-9)
    binary_ref, binary_pred = ref % 2, pred % 2
    assert metrics.compute("f1", binary_pred, binary_ref)["f1"] == pytest.approx(
        f1_score(binary_ref, binary_pred, pos_label=1, zero_division=0.0), abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_correlations_match_scipy(seed):
    from scipy import stats

    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 300))
    ref = np.round(rng.uniform(0, 5, size=n), int(rng.integers(0, 2)))  # rounding makes ties
    pred = ref * rng.uniform(-1, 1) + rng.normal(size=n)
    pred = np.round(pred, 1) if seed % 2 else pred
    out = metrics.compute("spearman", pred, ref)
    assert out["spearman"] == pytest.approx(stats.spearmanr(pred, ref).statistic, abs=1e-9)
    assert out["pearson"] == pytest.approx(stats.pearsonr(pred, ref).statistic, abs=1e-9)


@pytest.mark.parametrize(
    "args, message",
    [
        (("bleu", [1], [1]), "unknown metric 'bleu'"),
        (("accuracy", [1, 0], [1]), "2 predictions but 1 references"),
        (("accuracy", [], []), "no predictions to score"),
        (("pearson", [float("nan"), 1.0], [1.0, 2.0]), "NaN or infinite"),
        (("accuracy", [[0, 1]], [[0, 1]]), "1-D"),
        (("accuracy", ["a"], ["a"]), "must be numbers"),
    ],
)
def test_bad_inputs(args, message):
    with pytest.raises(ValueError, match=message):
        metrics.compute(*args)
