"""Tasks from local Hugging Face datasets (`hf:PATH[@SPLIT]`, worker.finetune.hf_datasets):
saved datasets and DatasetDicts, data files, named columns, ClassLabel names, clear errors."""

from __future__ import annotations

import datasets
import pytest

from storage.errors import InvalidInput, NotFound
from worker.finetune.data import load_task
from worker.finetune.runner import RunSpec, run
from worker.finetune.train import TrainConfig

WORDS = {"pos": ["good", "great", "lovely"], "neg": ["bad", "awful", "dull"]}


def reviews(n: int = 60) -> dict[str, list]:
    texts, labels = [], []
    for i in range(n):
        y = i % 2
        texts.append(f"the film was {WORDS['pos' if y else 'neg'][i % 3]} number {i}")
        labels.append(y)
    return {"review": texts, "sentiment": labels}


def test_a_saved_dataset_with_class_labels_and_named_columns(tmp_path):
    features = datasets.Features(
        {"review": datasets.Value("string"), "sentiment": datasets.ClassLabel(names=["neg", "pos"])}
    )
    datasets.Dataset.from_dict(reviews(), features=features).save_to_disk(tmp_path / "saved")
    task = load_task(
        f"hf:{tmp_path / 'saved'}", text_column="review", label_column="sentiment", dev_size=5
    )
    assert task.problem == "classification" and task.label_names == ("neg", "pos")
    assert task.name == "saved" and len(task.dev.texts) == 5
    # the ClassLabel's names, not its codes: "pos" texts carry label index 1
    for text, label in zip(task.train.texts, task.train.labels, strict=True):
        assert (label == 1) == any(w in text for w in WORDS["pos"])
    with pytest.raises(InvalidInput, match="--label-column"):
        load_task(f"hf:{tmp_path / 'saved'}", text_column="review")


def test_a_dataset_dict_split_and_a_missing_split(tmp_path):
    both = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(reviews(40)),
            "test": datasets.Dataset.from_dict(reviews(30)),
        }
    )
    both.save_to_disk(tmp_path / "dd")
    task = load_task(f"hf:{tmp_path / 'dd'}@test", text_column="review", label_column="sentiment")
    assert len(task.train.texts) + len(task.dev.texts) == 30
    with pytest.raises(InvalidInput, match="splits"):
        load_task(f"hf:{tmp_path / 'dd'}@validation", text_column="review")


def test_a_parquet_file_and_a_causal_lm_dataset(tmp_path):
    rows = reviews(30)
    rows["stars"] = [0.5 + i / 10 for i in range(30)]
    datasets.Dataset.from_dict(rows).to_parquet(tmp_path / "r.parquet")
    task = load_task(f"hf:{tmp_path / 'r.parquet'}", text_column="review", label_column="stars")
    assert task.problem == "regression" and task.metric == "pearson"

    pairs = {"instruction": [f"say {i}" for i in range(20)], "output": [str(i) for i in range(20)]}
    datasets.Dataset.from_dict(pairs).save_to_disk(tmp_path / "sft")
    lm = load_task(f"hf:{tmp_path / 'sft'}", problem="causal_lm")
    assert lm.problem == "causal_lm" and lm.train.responses is not None


def test_a_missing_dataset_is_not_fetched_from_the_hub(tmp_path):
    with pytest.raises(NotFound, match="local datasets only"):
        load_task("hf:imdb")


def test_a_run_trains_on_a_saved_dataset(tmp_path):
    datasets.Dataset.from_dict(reviews()).save_to_disk(tmp_path / "saved")
    record = run(
        RunSpec(
            task=f"hf:{tmp_path / 'saved'}",
            method="full",
            model="tiny-bert",
            train=TrainConfig(max_steps=2, batch_size=8, lr=1e-3, seed=0),
            text_column="review",
            label_column="sentiment",
            out=str(tmp_path / "run"),
        )
    )
    assert record["task"] == "saved" and record["data"]["labels"] == ["0", "1"]
