"""Module 01's kernels (nn): LayerNorm, Linear, Dropout, GELU and cross_entropy, forward + backward, against PyTorch.

Shapes are those of the course's guide transformer (batch 64 x length 10 = 640 token rows, d_model 128, FF 512, a
20-token vocabulary), plus LayerNorm at d_model 512 and at BERT-base size (32 x 512 rows of 768). Every call runs
the forward and the backward with gradients for the input and the parameters; gradients are reset to None first
(as `zero_grad()` does), in ours and torch's alike. Targets (ours / torch): <= 1.0 where NumPy can match torch;
report-only (target None) where it cannot, with the reason in the row's `why`: LayerNorm (NumPy cannot fuse
its passes) and GELU (module 00's kernel).
"""
import numpy as np

from bench.harness import Case
from bench.__main__ import torch_or_none
from tinytorch.nn import Dropout, GELU, LayerNorm, Linear, cross_entropy, manual_seed
from tinytorch.tensor import Tensor

N = 64 * 10          # token rows of the guide transformer's step: batch 64 x length 10

# Report-only rows, and why they have no target:
LAYER_NORM_WHY = ("NumPy cannot fuse: the kernel is ~11 passes over (M, n) arrays (5 forward, 6 backward) plus 6 BLAS "
                  "reductions, against torch's 2-3 fused passes; measured 1.3-2x torch after removing temporaries")
GELU_WHY = ("the kernel is module 00's (tinytorch.tensor.GELU), not module 01's: erf/tanh built from many "
            "elementwise NumPy passes (and float32 x ** 3); see bench_nn's report")


def _reset(*tensors):
    for t in tensors:
        t.grad = None


def _pair(ours_module, theirs_module, x, g, torch):
    "fwd+bwd closures for a module taking one input, ours and torch's (None without torch)."
    X = Tensor(x, requires_grad=True)
    params = list(ours_module.parameters())

    def ours():
        _reset(X, *params)
        ours_module(X).backward(g)

    ref = None
    if torch is not None:
        tx, tg = torch.from_numpy(x.copy()).requires_grad_(), torch.from_numpy(g)
        tparams = list(theirs_module.parameters())

        def ref():
            _reset(tx, *tparams)
            theirs_module(tx).backward(tg)
    return ours, ref


def _max_diff(ours_module, theirs_module, x, torch):
    if torch is None:
        return {}
    with torch.no_grad():
        theirs = theirs_module(torch.from_numpy(x)).numpy()
    return {'max_abs_diff': float(np.abs(ours_module(Tensor(x)).data - theirs).max())}


def _layer_norm_cases(torch, rows, d):
    rng = np.random.default_rng(0)
    x, g = (rng.standard_normal((rows, d)).astype(np.float32) for _ in range(2))
    ours_module = LayerNorm(d)
    ours_module.weight.data[...] = rng.standard_normal(d)
    ours_module.bias.data[...] = rng.standard_normal(d)
    theirs = None
    if torch is not None:
        theirs = torch.nn.LayerNorm(d)
        theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours_module.state_dict().items()})
    ours, ref = _pair(ours_module, theirs, x, g, torch)
    return [Case('nn layer_norm fwd+bwd', f'({rows}, {d})', ours, ref, target=None,
                 extra=dict(_max_diff(ours_module, theirs, x, torch), why=LAYER_NORM_WHY))]


def _linear_cases(torch, rows, d_in, d_out):
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((rows, d_in)).astype(np.float32), rng.standard_normal((rows, d_out)).astype(np.float32)
    manual_seed(0)
    ours_module = Linear(d_in, d_out)
    theirs = None
    if torch is not None:
        theirs = torch.nn.Linear(d_in, d_out)
        theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours_module.state_dict().items()})
    ours, ref = _pair(ours_module, theirs, x, g, torch)
    return [Case('nn linear fwd+bwd', f'({rows}, {d_in}) -> {d_out}', ours, ref, target=1.0,
                 extra=_max_diff(ours_module, theirs, x, torch))]


def _gelu_cases(torch, rows, d):
    rng = np.random.default_rng(0)
    x, g = (rng.standard_normal((rows, d)).astype(np.float32) for _ in range(2))
    out = []
    for approximate in ('none', 'tanh'):
        ours_module = GELU(approximate)
        theirs = torch.nn.GELU(approximate) if torch is not None else None
        ours, ref = _pair(ours_module, theirs, x, g, torch)
        out.append(Case('nn gelu fwd+bwd', f"({rows}, {d}) approximate='{approximate}'", ours, ref,
                        target=None, extra=dict(_max_diff(ours_module, theirs, x, torch), why=GELU_WHY)))
    return out


def _dropout_cases(torch, rows, d, p=0.1):
    rng = np.random.default_rng(0)
    x, g = (rng.standard_normal((rows, d)).astype(np.float32) for _ in range(2))
    manual_seed(0)
    theirs = torch.nn.Dropout(p) if torch is not None else None
    ours, ref = _pair(Dropout(p), theirs, x, g, torch)
    return [Case('nn dropout fwd+bwd', f'({rows}, {d}) p={p}', ours, ref, target=1.0)]


def _cross_entropy_cases(torch, rows, classes):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((rows, classes)).astype(np.float32)
    target = rng.integers(0, classes, rows)
    out = []
    for kwargs in ({}, dict(ignore_index=0, label_smoothing=0.1)):
        X = Tensor(logits, requires_grad=True)

        def ours(X=X, kwargs=kwargs):
            _reset(X)
            cross_entropy(X, target, **kwargs).backward()

        ref = None
        extra = {}
        if torch is not None:
            tx, tt = torch.from_numpy(logits.copy()).requires_grad_(), torch.from_numpy(target)

            def ref(tx=tx, tt=tt, kwargs=kwargs):
                _reset(tx)
                torch.nn.functional.cross_entropy(tx, tt, **kwargs).backward()

            with torch.no_grad():
                theirs = torch.nn.functional.cross_entropy(tx, tt, **kwargs).item()
            extra['abs_diff'] = abs(cross_entropy(Tensor(logits), target, **kwargs).item() - theirs)
        name = f'({rows}, {classes})' + (' ignore_index=0 smoothing=0.1' if kwargs else '')
        out.append(Case('nn cross_entropy fwd+bwd', name, ours, ref, target=1.0, extra=extra))
    return out


def cases(quick: bool = False) -> list:
    torch = torch_or_none()
    ln_shapes = [(N, 128), (N, 512)] if quick else [(N, 128), (N, 512), (32 * 512, 768)]
    out = []
    for rows, d in ln_shapes:
        out += _layer_norm_cases(torch, rows, d)
    out += _linear_cases(torch, N, 128, 512) + _linear_cases(torch, N, 512, 128)
    out += _dropout_cases(torch, N, 128) + _dropout_cases(torch, N, 512)
    out += _gelu_cases(torch, N, 512)
    out += _cross_entropy_cases(torch, N, 20)
    return out
