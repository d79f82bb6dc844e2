"""The random baseline: seeded random orthonormal bases with the shapes of a layout.

One generator for the whole project: the registry (services.random_basis, kind "random") and
the fine-tuning worker (`--method random`, worker.finetune.projection) both call
`random_orthonormal`, so the same (seed, layer, D, k) gives the same float32 bytes wherever it
is made.

Seeding rule. A layer is identified by its INDEX i in the layout order (`Layout.groups`, the
order of the `shapes` mapping passed in), not by its name. Its Gaussian G_i (D_i, k) comes from
its own torch CPU generator seeded with the 64-bit value `SeedSequence([seed, i])` gives
(`layer_generator`): independent streams per layer, and a layer keeps its stream when layers
are added after it. Entries are float64 standard normals drawn row-major (torch.randn).

Algorithm ("gaussian+cholesky-qr/1", the fine-tuning worker's since its first version, which
made the committed random-method results): one Cholesky QR in float64. R = chol(G^T G) (upper,
positive diagonal, so the factor is unique) and V = G R^-1, rounded to float32. A Gaussian
D x k with D >> k has condition number about (sqrt(D) + sqrt(k)) / (sqrt(D) - sqrt(k)), so V is
orthonormal to rounding; a draw whose condition number exceeds MAX_CONDITION (possible only
when D is close to k) is refused rather than served half-orthonormal. With scope="global" the
Gram is summed over the layers, so the stacked [V_0; V_1; ...] is one orthonormal basis and
each V_i its slice.

Whole or streamed. Without `write` each layer is one block: G drawn at once, one G^T G, one
triangular solve (the worker's computation, op for op). With `write` (the registry) G is drawn
in blocks of rows, `block_rows(k)`, and drawn again from its seed for the second pass: memory
O(block * k + k^2). The streamed bytes equal the whole ones because
- torch's CPU Gaussian fill draws uniforms and transforms them 16 at a time, redrawing the last
  16 when the size is not a multiple of 16; blocks of a multiple of 16 rows whose last one holds
  at least 16 values (`row_blocks`) consume and transform the stream as one call does;
- the Gram is accumulated into one (k, k) float64 buffer, the first block by `x.T @ x` and the
  next ones by `addmm_` (beta = 1), which continues the BLAS dot products where the last block
  stopped. Measured with MKL (torch's CPU BLAS): its AVX2 kernels give the one-call bits for any
  split, its generic code path (MKL_CBWR=COMPATIBLE) for splits at multiples of 128 rows, so
  blocks are multiples of BLOCK_UNIT = 256 rows. Another BLAS may split otherwise; the tests
  compare both routes (tests/worker/svd/test_random_basis.py, tests/services).
- each row of V = G R^-1 is its own triangular solve.
Every product runs on one torch thread (`single_thread`), so the bits do not depend on the
caller's thread count either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from storage.errors import InvalidInput
from storage.vocabulary import BasisScope, parse
from worker.svd.backend import single_thread

try:  # torch is a core dependency; the registry's numpy-only fallback cannot draw these bits
    import torch
except ImportError:  # pragma: no cover - exercised only on torch-less installs
    # mypy types `torch` as the module: an optional import cannot be a module or None to it.
    torch = None  # type: ignore[assignment]

GENERATOR = "gaussian+cholesky-qr/1"
# Values torch's Gaussian fill transforms together: a tail block holds at least this many.
FILL = 16
# Streamed blocks are multiples of this many rows (see the module docstring).
BLOCK_UNIT = 256
# Largest accepted condition number of G (of R): Cholesky QR loses about cond^2 * 1e-16 of
# orthogonality, so 1e4 keeps V^T V - I near 1e-8, below float32 rounding.
MAX_CONDITION = 1e4

Write = Callable[[str, int, int, np.ndarray], None]


def block_rows(k: int) -> int:
    """Rows per streamed block: about 2 Mi values, a power of two in [256, 65536]."""
    return 1 << max(8, min(16, ((1 << 21) // max(1, k)).bit_length() - 1))


def row_blocks(d: int, k: int, step: int | None) -> list[tuple[int, int]]:
    """Row ranges [a, b) of `step` rows (None: one block); a tail of fewer than FILL values joins
    the block before it (torch draws under 16 values by another path than its 16-value fill)."""
    if step is None:
        return [(0, d)]
    if step < 1 or step % BLOCK_UNIT:
        raise InvalidInput(f"block rows must be a positive multiple of {BLOCK_UNIT}, got {step}")
    out = []
    a = 0
    while a < d:
        b = min(a + step, d)
        if 0 < (d - b) * k < FILL:
            b = d
        out.append((a, b))
        a = b
    return out


def steps(shapes: Mapping[str, int], k: int, step: int | None = None) -> int:
    """How many times a streamed `random_orthonormal` calls `tick`: two passes over every
    layer's blocks of `step` rows (default `block_rows(k)`)."""
    step = step or block_rows(k)
    return 2 * sum(len(row_blocks(d, k, step)) for d in shapes.values())


def layer_generator(seed: int, index: int) -> torch.Generator:
    """The torch CPU generator of layer `index`: seeded from SeedSequence([seed, index])."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def gaussian_blocks(
    d: int, k: int, seed: int, index: int, step: int | None
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(a, b, G[a:b]) of layer `index`'s Gaussian G (d, k), float64 torch tensors, in row order;
    the concatenation is bit for bit `torch.randn(d, k)` from `layer_generator(seed, index)`."""
    gen = layer_generator(seed, index)
    for a, b in row_blocks(d, k, step):
        yield a, b, torch.randn(b - a, k, generator=gen, dtype=torch.float64)


def _check(shapes: Mapping[str, int], k: int, seed: int, scope: BasisScope) -> None:
    if torch is None:  # pragma: no cover
        raise InvalidInput("a random basis needs torch (its generator fixes the bits)")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InvalidInput(f"a random basis needs a non-negative integer seed, got {seed!r}")
    if k < 1:
        raise InvalidInput(f"a random basis needs k >= 1, got {k}")
    if not shapes:
        raise InvalidInput("a random basis needs at least one layer")
    too_small = {n: d for n, d in shapes.items() if d < k}
    if scope == BasisScope.LAYER and too_small:
        raise InvalidInput(f"layers {too_small} have fewer rows than k={k}")
    if scope == BasisScope.GLOBAL and sum(shapes.values()) < k:
        raise InvalidInput(f"the encoder has {sum(shapes.values())} parameters, fewer than k={k}")


def _cholesky(gram: torch.Tensor, what: str) -> torch.Tensor:
    """R (k, k) upper with R^T R = gram, refused when G's condition number is over the limit."""
    eig = torch.linalg.eigvalsh(gram)
    low, high = float(eig[0]), float(eig[-1])
    cond = float("inf") if low <= 0 else (high / low) ** 0.5
    if not cond <= MAX_CONDITION:
        raise InvalidInput(
            f"the Gaussian draw of {what} has condition number {cond:.3g} (over "
            f"{MAX_CONDITION:g}): Cholesky QR would not give an orthonormal basis; use "
            "another seed or a smaller rank"
        )
    try:
        r: torch.Tensor = torch.linalg.cholesky(gram, upper=True)
        return r
    except RuntimeError as exc:  # torch.linalg.LinAlgError: not positive definite
        raise InvalidInput(f"the Gaussian draw of {what} is not of full rank: {exc}") from exc


@dataclass(frozen=True)
class _Passes:
    """The two passes over each layer's Gaussian G (d, k) of one `random_orthonormal` call: its
    rank, seed, rows per block (None: one block), per-block callback, and where V goes (`write`,
    else `out`)."""

    k: int
    seed: int
    step: int | None
    tick: Callable[[], None]
    write: Write | None
    out: dict[str, np.ndarray] = field(default_factory=dict)

    def gram(self, i: int, d: int, kept: list[torch.Tensor] | None) -> torch.Tensor:
        """G^T G (k, k) float64 of layer i, accumulated block by block; the blocks of G are
        appended to `kept` when it is a list (to be solved without drawing them again)."""
        g: torch.Tensor | None = None
        for _a, _b, x in gaussian_blocks(d, self.k, self.seed, i, self.step):
            g = x.T @ x if g is None else g.addmm_(x.T, x)
            if kept is not None:
                kept.append(x)
            self.tick()
        if g is None:
            # No blocks: a layer of 0 rows, streamed (unstreamed it is one empty block). Its
            # Gram is zero, as the unstreamed x.T @ x of a (0, k) x gives.
            g = torch.zeros(self.k, self.k, dtype=torch.float64)
        return g

    def solve(
        self, name: str, i: int, d: int, r: torch.Tensor, kept: list[torch.Tensor] | None
    ) -> None:
        """V = G R^-1 of layer i in float32, block by block from `kept` (else G drawn again):
        each block to `write`, or, without it, the whole V into out[name]."""
        if kept is None:
            blocks = gaussian_blocks(d, self.k, self.seed, i, self.step)
        else:
            pairs = zip(row_blocks(d, self.k, self.step), kept, strict=True)
            blocks = ((a, b, x) for (a, b), x in pairs)
        full = None if self.write is not None else np.empty((d, self.k), dtype=np.float32)
        for a, b, x in blocks:
            v = torch.linalg.solve_triangular(r, x, upper=True, left=False).float().numpy()
            if full is None:
                assert self.write is not None  # full is None exactly when write was given
                self.write(name, a, b, v)
            else:
                full[a:b] = v
            self.tick()
        if full is not None:
            self.out[name] = full


def random_orthonormal(
    shapes: Mapping[str, int],
    k: int,
    seed: int,
    *,
    scope: BasisScope | str = BasisScope.LAYER,
    write: Write | None = None,
    tick: Callable[[], None] | None = None,
    rows_per_block: int | None = None,
) -> dict[str, np.ndarray] | None:
    """Seeded random orthonormal bases V_i (D_i, k) float32, one per layer of `shapes` (layer
    name -> D_i, in layout order: the position is the layer's stream, see the module docstring).

    Without `write`, returns {name: V_i}; memory: the outputs plus one layer's float64 G.
    With `write`, streams V_i block by block to write(name, a, b, V_i[a:b]) in row order and
    returns None; memory O(block * k + k^2). `rows_per_block`: a multiple of BLOCK_UNIT
    (streamed default `block_rows(k)`, else one block per layer); it changes the memory, not
    the bytes. `tick()` runs after every block of both passes (`steps` counts them when
    streaming): where a job checks cancel, stop and lease.
    """
    scope = parse(BasisScope, scope, "scope")
    _check(shapes, k, seed, scope)
    step = rows_per_block or (block_rows(k) if write is not None else None)
    row_blocks(1, 1, step)  # validates the step before any work
    passes = _Passes(k, seed, step, tick or (lambda: None), write)
    layers = list(shapes.items())
    with single_thread():
        if scope == BasisScope.GLOBAL:
            total = torch.zeros(k, k, dtype=torch.float64)
            for i, (_name, d) in enumerate(layers):
                total += passes.gram(i, d, None)
            r = _cholesky(total, f"the {len(layers)} stacked layers")
            for i, (name, d) in enumerate(layers):
                passes.solve(name, i, d, r, None)
        else:
            for i, (name, d) in enumerate(layers):
                # Returning the outputs holds them anyway: hold G too rather than draw it again.
                kept: list[torch.Tensor] | None = [] if write is None else None
                r = _cholesky(passes.gram(i, d, kept), f"layer {name!r} ({d} x {k})")
                passes.solve(name, i, d, r, kept)
    return passes.out if write is None else None
