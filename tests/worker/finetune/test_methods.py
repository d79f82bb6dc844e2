import pytest
import torch

from storage.basis import BasisStore
from storage.errors import InvalidInput
from tests.worker.finetune.conftest import make_batch, make_model
from tests.worker.finetune.helpers import record_trajectory
from worker.finetune.config import SubspaceConfig
from worker.finetune.methods import METHODS, prepare
from worker.finetune.reparam import SubspaceModel
from worker.finetune.sources import StoreBasisSource
from worker.finetune.train import param_groups


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Task, global, unified and zero-shot bases from real (tiny) fine-tuning trajectories of
    two tasks: 'a' and 'b' are the same model trained on different batches."""
    from worker.svd.bases import multitask_bases, task_basis

    tmp = tmp_path_factory.mktemp("bases")
    stores = {
        name: record_trajectory(
            make_model("bert", seed=0), str(tmp / f"traj-{name}"), steps=6, seed=seed
        )
        for name, seed in (("a", 1), ("b", 2))
    }
    out = {
        "task-a": task_basis(stores["a"].url, str(tmp / "task-a"), 4).bases[0],
        "task-b": task_basis(stores["b"].url, str(tmp / "task-b"), 4).bases[0],
        "global-a": task_basis(stores["a"].url, str(tmp / "global-a"), 4, scope="global").bases[0],
    }
    multi = multitask_bases(
        {k: s.url for k, s in stores.items()}, str(tmp / "multi"), 4, selection="all"
    )
    for b in multi.bases:
        out[b.url.rstrip("/").rsplit("/", 1)[-1]] = b
    return out


def _source(bases, method):
    key = {
        "intrinsic": "task-a",
        "transfer": "task-b",
        "unified": "unified",
        "zeroshot": "zeroshot-a",
        "global": "global-a",
    }.get(method)
    if key is None:
        return None
    task = {"task-a": "a", "task-b": "b", "global-a": "a"}.get(key)
    return StoreBasisSource(BasisStore.open(bases[key].url), task=task)


def _loss_curve(model, steps=8, lr=1e-3, theta_lr=0.05):
    opt = torch.optim.Adam(param_groups(model, lr, theta_lr))
    batch = make_batch(seed=1)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("method", METHODS)
def test_every_method_lowers_the_loss(method, bases):
    cfg = SubspaceConfig(
        rank=None if method in ("intrinsic", "transfer", "unified", "zeroshot", "global") else 4
    )
    model = prepare(method, make_model("bert"), cfg, source=_source(bases, method), task="a")
    losses = _loss_curve(model)
    assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.parametrize(
    "method", ["intrinsic", "transfer", "unified", "zeroshot", "global", "random", "fastfood"]
)
def test_the_subspace_alone_lowers_the_loss(method, bases):
    """Only theta trains (no embeddings, no head): the drop comes from V theta. Plain V theta
    (theta_scale none): this tests the directions, at one large lr for every basis; the default
    rule's steps are the tiny trajectory's own size (tests/worker/finetune/test_theta_rule.py)."""
    cfg = SubspaceConfig(
        theta_scale="none",
        train_parts=(),
        init="zeros",
        rank=None if method in ("intrinsic", "transfer", "unified", "zeroshot", "global") else 4,
        said=method == "fastfood",
    )
    model = prepare(method, make_model("bert"), cfg, source=_source(bases, method), task="a")
    assert isinstance(model, SubspaceModel)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.startswith("subspace_") for n in trainable)
    losses = _loss_curve(model, theta_lr=2.0)
    # A random subspace of dimension 4 moves the loss least (the paper's point); every
    # subspace must still descend.
    assert losses[-1] < losses[0] - 1e-3, losses


def test_freeze_trains_embeddings_and_head_only():
    model = prepare("freeze", make_model("roberta"), SubspaceConfig())
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(".encoder." not in f".{n}" for n in names)
    assert any("embeddings" in n for n in names) and any("classifier" in n for n in names)
    full = prepare("full", make_model("roberta"))
    assert all(p.requires_grad for p in full.parameters())


def test_dim_keeps_the_leading_columns(bases):
    model = prepare(
        "intrinsic",
        make_model("bert"),
        SubspaceConfig(rank=2),
        source=_source(bases, "intrinsic"),
        task="a",
    )
    assert next(iter(model.subspace_theta.values())).shape == (16, 2)
    assert model.subspace_reference["columns"] == 2
    with pytest.raises(InvalidInput, match="rank"):
        prepare(
            "intrinsic",
            make_model("bert"),
            SubspaceConfig(rank=9),
            source=_source(bases, "intrinsic"),
        )


def test_bases_are_checked_against_the_method_and_task(bases):
    base = make_model("bert")
    with pytest.raises(InvalidInput, match="own basis"):
        prepare("intrinsic", base, source=_source(bases, "transfer"), task="a")
    with pytest.raises(InvalidInput, match="intrinsic"):
        prepare("transfer", base, source=_source(bases, "intrinsic"), task="a")
    with pytest.raises(InvalidInput, match="holds out"):
        prepare("zeroshot", base, source=_source(bases, "zeroshot"), task="b")
    with pytest.raises(InvalidInput, match="'unified' basis"):
        prepare("unified", base, source=_source(bases, "intrinsic"), task="a")
    with pytest.raises(InvalidInput, match="global"):
        prepare("intrinsic", base, source=_source(bases, "global"), task="a")
    with pytest.raises(InvalidInput, match="needs a rank"):
        prepare("random", base)
    with pytest.raises(InvalidInput, match="unknown method"):
        prepare("lora", base)
    with pytest.raises(InvalidInput, match="stored basis"):
        prepare("intrinsic", base)


def test_random_matches_the_shapes_of_a_given_basis(bases):
    model = prepare(
        "random", make_model("bert"), SubspaceConfig(), source=_source(bases, "intrinsic")
    )
    assert model.subspace_reference["kind"] == "random"
    assert next(iter(model.subspace_theta.values())).shape[1] == 4


class _ShortLayer:
    """A basis whose first layer lost its last column (rank cut by the kernel's rcond)."""

    def __init__(self, source):
        self._s = source
        self._short = source.layer_names()[0]

    def __getattr__(self, name):
        return getattr(self._s, name)

    def shape(self, layer):
        rows, k = self._s.shape(layer)
        return (rows, k - 1) if layer == self._short else (rows, k)

    def load(self, layer):
        v = self._s.load(layer)
        return v[:, :-1] if layer == self._short else v

    def extent(self, layer):
        s = self._s.extent(layer)
        return s[:-1] if layer == self._short else s


def test_a_rank_deficient_layer_keeps_all_its_columns(bases):
    source = _ShortLayer(_source(bases, "intrinsic"))
    model = prepare(
        "intrinsic", make_model("bert"), SubspaceConfig(rank=4), source=source, task="a"
    )
    shapes = [tuple(t.shape) for t in model.subspace_theta.values()]
    assert shapes[0] == (16, 3) and all(s == (16, 4) for s in shapes[1:])
    assert model.subspace_reference["short_layers"] == {source.layer_names()[0]: 3}
    # more than any layer has is still refused, unless the caller accepts short layers
    with pytest.raises(InvalidInput, match="rank 4"):
        prepare("intrinsic", make_model("bert"), SubspaceConfig(rank=5), source=source, task="a")
    cfg = SubspaceConfig(rank=5, allow_short=True)
    model = prepare("intrinsic", make_model("bert"), cfg, source=source, task="a")
    shapes = [tuple(t.shape) for t in model.subspace_theta.values()]
    assert shapes[0] == (16, 3) and all(s == (16, 4) for s in shapes[1:])
    assert set(model.subspace_reference["short_layers"]) == set(source.layer_names())
