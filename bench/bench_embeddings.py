"""Embeddings and positional encoding (modules 04 and 05) against PyTorch, one thread.

Grid: vocabulary V in {20, 50 000} x embedding_dim D in {128, 768} x batch (B, T) in {(64, 10), (32, 512), (8, 2048)},
uniformly random ids.

- embedding forward: our `Embedding(V, D)(ids)` against `torch.nn.Embedding(V, D)(ids)`, both modules with a
  weight that requires grad (so both record the lookup for backward). Target: ours/torch <= 1.0.
- embedding backward: the kernel, `embedding_backward(grad, ids, V)`, against the one `nn.Embedding`'s backward
  calls, `torch.ops.aten.embedding_dense_backward`; both return the dense (V, D) gradient. Target <= 1.5.
  Rows without a target: a middle-sized vocabulary (V = 1000) and Zipf-distributed ids (a few very frequent
  tokens), the regimes between the grid's two.
- sinusoidal table: `sinusoidal_table(max_len, d_model)` against the PyTorch tutorial's float32 recipe in
  PyTorch. Target <= 2.0, and ours within 1e-6 of a float64 reference (`extra`: both recipes' max errors).
- PE add: our `PositionalEncoding(D)` on an embedding lookup's output (added in place: nothing else holds the
  array) against `x + pe[:T]` in PyTorch on `nn.Embedding`'s output. Target <= 1.2. A row without a target shows
  ours when the input is shared (so the add is out of place).
"""
import math

import numpy as np

from tinytorch.embeddings import Embedding, embedding_backward
from tinytorch.positional import PositionalEncoding, sinusoidal_table

from .__main__ import torch_or_none
from .harness import Case

GRID_V, GRID_D = (20, 50_000), (128, 768)
GRID_BT = ((64, 10), (32, 512), (8, 2048))


def _torch_table(torch, max_len: int, d_model: int):
    "The PyTorch tutorial's sinusoidal table: float32 angles."
    position = torch.arange(max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term[:d_model // 2])
    return pe


def _exact_table(max_len: int, d_model: int) -> np.ndarray:
    angle = np.arange(max_len)[:, None] * np.exp(np.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
    table = np.empty((max_len, d_model))
    table[:, 0::2], table[:, 1::2] = np.sin(angle), np.cos(angle[:, :d_model // 2])
    return table


def _embedding_cases(torch, grid, rng) -> list:
    cases = []
    for V, D, (B, T) in grid:
        ids = rng.integers(0, V, (B, T))
        ours = Embedding(V, D)
        ref = None
        if torch:
            layer = torch.nn.Embedding(V, D)
            ids_t = torch.from_numpy(ids)
            ref = lambda layer=layer, ids_t=ids_t: layer(ids_t)
            ours.load_state_dict({'weight': layer.weight.detach().numpy()})
            np.testing.assert_array_equal(ours(ids).data, ref().detach().numpy())
        cases.append(Case('embedding forward', f'V={V} D={D} B={B} T={T}', lambda ours=ours, ids=ids: ours(ids),
                          ref, target=1.0))
    return cases


def _backward_case(torch, name: str, ids: np.ndarray, V: int, D: int, rng, target) -> Case:
    grad = rng.standard_normal(ids.shape + (D,)).astype(np.float32)
    ours = lambda: embedding_backward(grad, ids, V)
    ref = None
    if torch:
        grad_t, ids_t = torch.from_numpy(grad), torch.from_numpy(ids)
        ref = lambda: torch.ops.aten.embedding_dense_backward(grad_t, ids_t, V, -1, False)
        np.testing.assert_allclose(ours(), ref().numpy(), atol=1e-3)
    return Case('embedding backward', name, ours, ref, target=target,
                extra=dict(distinct_ids=int(np.unique(ids).size)))


def _table_cases(torch, grid) -> list:
    cases = []
    for max_len, d in grid:
        exact = _exact_table(max_len, d)
        extra = dict(ours_max_error=float(np.abs(sinusoidal_table(max_len, d) - exact).max()))
        ref = None
        if torch:
            ref = lambda max_len=max_len, d=d: _torch_table(torch, max_len, d)
            extra['torch_max_error'] = float(np.abs(ref().numpy() - exact).max())
        cases.append(Case('sinusoidal table', f'max_len={max_len} d_model={d}',
                          lambda max_len=max_len, d=d: sinusoidal_table(max_len, d), ref, target=2.0, extra=extra))
    return cases


def _pe_cases(torch, grid, rng) -> list:
    cases = []
    for D, (B, T) in grid:
        ids = rng.integers(0, 1000, (B, T))
        emb, pe = Embedding(1000, D), PositionalEncoding(D, max_len=5000)
        x = emb(ids)                                  # an intermediate result that nothing else holds
        assert pe(x).data is x.data, 'expected the add to be in place'
        ref = None
        if torch:
            emb_t, pe_t = torch.nn.Embedding(1000, D), torch.from_numpy(pe.pe.data)
            x_t = emb_t(torch.from_numpy(ids))
            ref = lambda x_t=x_t, pe_t=pe_t, T=T: x_t + pe_t[:T]
        cases.append(Case('PE add', f'D={D} B={B} T={T}', lambda pe=pe, x=x: pe(x), ref, target=1.2))
        y = emb(ids)
        shared = y.data[:]                            # a view: someone else holds the array
        assert pe(y).data is not y.data
        cases.append(Case('PE add, input shared', f'D={D} B={B} T={T}', lambda pe=pe, y=y, s=shared: pe(y), ref,
                          extra=dict(note='out of place')))
    return cases


def cases(quick: bool) -> list:
    torch = torch_or_none()
    rng = np.random.default_rng(0)
    bts = GRID_BT[::2] if quick else GRID_BT
    grid = [(V, D, bt) for V in GRID_V for D in ((128,) if quick else GRID_D) for bt in bts]
    out = _embedding_cases(torch, grid, rng)
    for V, D, (B, T) in grid:
        out.append(_backward_case(torch, f'V={V} D={D} B={B} T={T}', rng.integers(0, V, (B, T)), V, D, rng, 1.5))
    if not quick:
        out.append(_backward_case(torch, 'V=1000 D=768 B=32 T=512', rng.integers(0, 1000, (32, 512)), 1000, 768,
                                  rng, None))
        zipf = np.minimum(rng.zipf(1.2, (32, 512)), 50_000) - 1
        out.append(_backward_case(torch, 'V=50000 D=768 B=32 T=512, Zipf ids', zipf, 50_000, 768, rng, None))
    tables = [(512, 128), (5000, 128)] if quick else [(m, d) for m in (512, 2048, 5000) for d in GRID_D]
    out += _table_cases(torch, tables)
    out += _pe_cases(torch, [(D, bt) for D in ((128,) if quick else GRID_D) for bt in bts], rng)
    return out
