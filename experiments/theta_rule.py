"""The ablation that chose how theta is trained (issue 11): score against dimension per rule.

`python -m experiments.theta_rule --out docs/results/theta_rule --basis B --task T` trains the
task in its own basis at several dimensions, once per rule (``extent``: V diag(extent) theta,
``none``: the paper's plain V theta), theta learning rate and seed, plus freeze, and scores every
run on the *tuning* split (never the dev split the paper report scores on). It writes one line
per run to runs.jsonl (resumable: finished runs are skipped) and a table to table.md.

The rule is right when the score does not fall as the dimension grows and no run ends below
freeze; the numbers that chose the default are committed under docs/results/theta_rule/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from experiments.execute import init_worker
from worker.finetune.config import SubspaceConfig
from worker.finetune.runner import RunSpec, run
from worker.finetune.train import TrainConfig

RESULTS = "runs.jsonl"


def _spec(args: argparse.Namespace, method: str, rule: str, lr: float, dim: int | None, seed: int):
    run_id = f"{method}/{rule}/lr{lr:g}/d{dim}/s{seed}"
    out = Path(args.work) / run_id.replace("/", "__")
    spec = RunSpec(
        task=args.task,
        method=method,
        model=args.model,
        out=str(out),
        subspace=SubspaceConfig(rank=dim, theta_lr=lr, theta_scale=rule, basis_seed=seed),
        train=TrainConfig(
            lr=args.lr,
            head_lr=args.head_lr,
            batch_size=16,
            max_steps=args.steps,
            max_length=args.max_length,
            seed=seed,
        ),
        basis=args.basis if method == "intrinsic" else None,
        dev_fraction=args.dev_fraction,
        tune_fraction=args.tune_fraction,
        train_size=args.train_size,
        tune_size=args.tune_size,
        eval_split="tune",
    )
    return run_id, spec


def _one(item: tuple[str, RunSpec, dict]) -> dict[str, Any]:
    run_id, spec, meta = item
    rec = run(spec)
    return {
        "id": run_id,
        **meta,
        "task": rec["task"],
        "metric": rec["metric"],
        "score": rec["score"],
        "eval_split": rec["data"]["eval_split"],
        "eval_size": rec["data"]["dev_size"],
        "last_loss": rec["train"]["last_loss"],
        "seconds": rec["seconds"],
    }


def plan(args: argparse.Namespace) -> list[tuple[str, RunSpec, dict]]:
    items = []
    for seed in args.seeds:
        run_id, spec = _spec(args, "freeze", "none", 0.01, None, seed)
        items.append((f"freeze/s{seed}", spec, {"method": "freeze", "seed": seed}))
        for rule, lrs in (("extent", args.extent_lrs), ("none", args.none_lrs)):
            for lr in lrs:
                for dim in args.dims:
                    run_id, spec = _spec(args, "intrinsic", rule, lr, dim, seed)
                    meta = {"method": "intrinsic", "rule": rule, "theta_lr": lr, "dim": dim}
                    items.append((run_id, spec, {**meta, "seed": seed}))
    return items


def table(records: list[dict]) -> str:
    """Mean (min) over seeds per rule, lr and dim; freeze beside it."""
    freeze = [r["score"] for r in records if r["method"] == "freeze"]
    lines = []
    if freeze:
        lines.append(
            f"freeze: mean {100 * statistics.mean(freeze):.1f}, min {100 * min(freeze):.1f} "
            f"(n={len(freeze)})\n"
        )
    dims = sorted({r["dim"] for r in records if r["method"] == "intrinsic"})
    lines.append("| rule | theta lr | " + " | ".join(f"dim {d}" for d in dims) + " |")
    lines.append("|---|---|" + "---|" * len(dims))
    keys = sorted({(r["rule"], r["theta_lr"]) for r in records if r["method"] == "intrinsic"})
    for rule, lr in keys:
        cells = []
        for d in dims:
            s = [
                r["score"]
                for r in records
                if r.get("rule") == rule and r.get("theta_lr") == lr and r.get("dim") == d
            ]
            cells.append(
                f"{100 * statistics.mean(s):.1f} (min {100 * min(s):.1f}, n={len(s)})" if s else ""
            )
        lines.append(f"| {rule} | {lr:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _settings(args: argparse.Namespace) -> dict:
    # Paths are this machine's: the report keeps the settings that decide the numbers.
    return {k: v for k, v in vars(args).items() if k not in ("out", "work", "basis", "workers")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--work", default=None)
    p.add_argument("--task", default="rotten_tomatoes")
    p.add_argument("--basis", required=True, help="the task's own delta basis (k >= max dim)")
    p.add_argument("--model", default="minilm")
    p.add_argument("--dims", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--extent-lrs", type=float, nargs="+", default=[0.05, 0.2, 0.5])
    p.add_argument("--none-lrs", type=float, nargs="+", default=[0.01, 0.05])
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--head-lr", type=float, default=3e-3)
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--train-size", type=int, default=1000)
    p.add_argument("--tune-size", type=int, default=300)
    p.add_argument("--dev-fraction", type=float, default=0.15)
    p.add_argument("--tune-fraction", type=float, default=0.1)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or str(out / "work")
    done_file = out / RESULTS
    done = set()
    if done_file.exists():
        done = {json.loads(line)["id"] for line in done_file.read_text().splitlines() if line}
    todo = [i for i in plan(args) if i[0] not in done]
    threads = max(1, (os.cpu_count() or 2) // args.workers)
    with ProcessPoolExecutor(args.workers, initializer=init_worker, initargs=(threads,)) as pool:
        for rec in pool.map(_one, todo):
            with open(done_file, "a") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()
                os.fsync(f.fileno())
            print(rec["id"], f"{rec['score']:.4f}", flush=True)
    records = [json.loads(line) for line in done_file.read_text().splitlines() if line]
    (out / "table.md").write_text(
        f"# Theta training rule: {args.task}, scored on the tuning split\n\n"
        f"Settings: {json.dumps(_settings(args))}\n\n" + table(records)
    )


if __name__ == "__main__":
    main()
