#!/usr/bin/env python3
"""tinysub-finetune-check: load a pulled basis onto the training device and check it.

Reads TINYSUB_URL, TINYSUB_TOKEN, TINYSUB_TASK_ID, TINYSUB_BASIS_KIND (default task) and
TINYSUB_DEVICE (auto: CUDA when a GPU is visible). The basis comes from the client's cache (the
`tinysub basis pull` before it fetched and verified it; here the manifest is only revalidated).
Prints one JSON line: task, kind, version, device, and per layer its shape and the largest
entry of |V^T V - I|; exits 1 if a basis is not orthonormal to 1e-4.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    import torch

    from client import Client
    from worker.svd.backend import resolve_device

    task = os.environ["TINYSUB_TASK_ID"]
    kind = os.environ.get("TINYSUB_BASIS_KIND", "task")
    device = resolve_device()  # 'cuda', 'cpu' or 'numpy' (no torch: never here)
    target = torch.device("cpu" if device == "numpy" else device)
    report: dict = {"task": task, "kind": kind, "device": str(target), "layers": {}}
    with Client(os.environ.get("TINYSUB_URL", "http://127.0.0.1:8000")) as client:
        pulled = client.pull_basis(task, kind)
        report["version"] = pulled.version
        for name in pulled.files:
            v = torch.from_numpy(pulled.array(name)).to(target)  # (D, k) float32
            gram = v.double().T @ v.double()  # (k, k)
            error = (gram - torch.eye(gram.shape[0], dtype=gram.dtype, device=target)).abs()
            report["layers"][name] = {
                "shape": list(v.shape),
                "orthonormality_error": float(error.max()),
            }
    print(json.dumps(report, sort_keys=True))
    worst = max((x["orthonormality_error"] for x in report["layers"].values()), default=0.0)
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
