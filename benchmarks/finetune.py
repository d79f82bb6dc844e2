"""Benchmark: seconds per training step of subspace fine-tuning against full fine-tuning.

    python benchmarks/finetune.py --quick --out FILE.json   # MiniLM and a tiny decoder
    python benchmarks/finetune.py --tiny --out FILE.json    # tiny models only (seconds)

Rows {model, method, dim, batch, seq_len, seconds_per_step, first_step_seconds,
peak_rss_mb, trainable}. Each (model, method) runs in a fresh process: `first_step_seconds`
is its first optimizer step (allocations, lazy kernels), `seconds_per_step` the best of
--repeat timed windows of --steps steps each, after that first step. A step is what the
training loop does (worker.finetune.optimizer.Updater): forward, loss, backward, gradient
clipping, the AdamW step, the schedule's step.

Methods: `full` (every parameter), `intrinsic` (theta per layer at rank --dim, the default
`theta_scale` off since no trajectory is measured here; the embeddings and head train as in
the worker's default), `freeze` (head and embeddings only: the floor under any subspace
method). The intrinsic rows use a seeded random orthonormal V of the basis' shape: a step's
cost is the same dense V theta product whatever V's values are, so no trajectory needs to be
recorded first. peak_rss_mb: the process' peak resident set growth over its baseline once the
model is built (Linux: /proc/self/clear_refs); the machine's load is recorded beside each row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.basis import _status_kb, reset_peak  # noqa: E402 - after the path fix

QUICK = [("minilm", "classification"), ("tiny-gpt2", "causal_lm")]
TINY = [("tiny-bert", "classification"), ("tiny-gpt2", "causal_lm")]
METHODS = ["full", "intrinsic", "freeze"]


def child(model_name: str, problem: str, method: str, args: argparse.Namespace) -> dict:
    """One (model, method) in this process: build, one first step, then timed windows."""
    import torch

    from worker.finetune.config import SubspaceConfig
    from worker.finetune.methods import prepare
    from worker.finetune.models import load_model
    from worker.finetune.optimizer import StepBudget, build_updater
    from worker.finetune.train import TrainConfig, seed_everything

    torch.set_num_threads(args.threads)
    seed_everything(0)
    # A tiny model builds its vocabulary from texts: 2,000 words, like the worker's tiny ones.
    words = [f"w{i}" for i in range(2000)]
    loaded = load_model(model_name, num_labels=2, problem=problem, texts=words)
    base = loaded.model
    config = SubspaceConfig(rank=args.dim, theta_scale="none")
    # `random` builds the same SubspaceModel as `intrinsic` (a dense V per layer) from a seed.
    model = prepare("random" if method == "intrinsic" else method, base, config)
    model.train()
    cfg = TrainConfig(max_steps=10_000, batch_size=args.batch, lr=1e-4, seed=0)
    updater = build_updater(model, cfg, StepBudget.of(10_000, cfg), theta_lr=0.05)
    vocab = base.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (args.batch, args.seq_len), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if problem == "causal_lm":
        batch["labels"] = ids.clone()
    else:
        batch["labels"] = torch.randint(0, 2, (args.batch,), generator=gen)

    def step() -> None:
        updater.apply(model(**batch).loss)

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base_rss = _status_kb("VmRSS")
    reset_peak()
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    windows = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        windows.append((time.perf_counter() - t0) / args.steps)
    peak = _status_kb("VmHWM")
    return {
        "model": model_name,
        "method": method,
        "dim": args.dim if method == "intrinsic" else None,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "seconds_per_step": min(windows),
        "first_step_seconds": first,
        "all_windows": windows,
        "peak_rss_mb": None if peak is None or base_rss is None else (peak - base_rss) / 1024,
        "trainable": trainable,
        "threads": args.threads,
    }


def measure(model_name: str, problem: str, method: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        json.dumps([model_name, problem, method]),
        *("--dim", str(args.dim), "--batch", str(args.batch), "--seq-len", str(args.seq_len)),
        *("--steps", str(args.steps), "--repeat", str(args.repeat)),
        *("--threads", str(args.threads)),
    ]
    load_before = os.getloadavg()[0]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{model_name} {method} failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["load_before"], row["load_after"] = load_before, os.getloadavg()[0]
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| model | method | dim | s/step (best) | first step s | x full | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    full = {r["model"]: r["seconds_per_step"] for r in rows if r["method"] == "full"}
    for r in rows:
        ratio = r["seconds_per_step"] / full[r["model"]] if r["model"] in full else None
        lines.append(
            f"| {r['model']} | {r['method']} | {r['dim'] or ''} | {r['seconds_per_step']:.4f} | "
            f"{r['first_step_seconds']:.3f} | {'' if ratio is None else f'{ratio:.2f}'} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="MiniLM and tiny-gpt2 (minutes)")
    size.add_argument("--tiny", action="store_true", help="tiny models (seconds)")
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--models", nargs="+", help="only these of the preset's models")
    p.add_argument("--dim", type=int, default=32, help="intrinsic rank per layer")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=48)
    p.add_argument("--steps", type=int, default=None, help="steps per timed window")
    p.add_argument("--repeat", type=int, default=3, help="timed windows; the best is reported")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the worker uses 1)")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 3 if args.tiny else 10
    if args.child:
        print(json.dumps(child(*json.loads(args.child), args)))
        return 0
    models = [m for m in (TINY if args.tiny else QUICK) if not args.models or m[0] in args.models]
    rows = []
    for model_name, problem in models:
        for method in args.methods:
            rows.append(measure(model_name, problem, method, args))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "child")},
            "rows": rows,
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
