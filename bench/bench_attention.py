"""Attention (module 06): our fused `scaled_dot_product_attention` and `MultiheadAttention` against PyTorch's
`torch.nn.functional.scaled_dot_product_attention` and `torch.nn.MultiheadAttention`.

Rows: forward (inference: no gradient, no weights returned, eval mode, as torch's fused paths) and forward +
backward (gradients for the inputs, and for the parameters of MultiheadAttention), at (B, H, T, d) = (64, 8, 10, 16)
and (8, 12, 512, 64), without and with a causal mask. Targets (ours / torch): <= 1.0 at the small shape, <= 1.5
at T = 512. Report-only rows: the forward pass that also returns the (B, H, T, T) weights (torch's function has
no such mode; the reference is its plain forward).
"""
import numpy as np

from bench.harness import Case
from bench.__main__ import torch_or_none
from tinytorch.attention import MultiheadAttention, attend, causal_mask, scaled_dot_product_attention
from tinytorch.nn import manual_seed
from tinytorch.tensor import Tensor, no_grad

TARGETS = {10: 1.0, 512: 1.5}


def _name(B, H, T, d, causal):
    return f"B={B} H={H} T={T} d={d}" + (" causal" if causal else "")


def _sdpa_cases(torch, B, H, T, d, causal, target):
    rng = np.random.default_rng(0)
    q, k, v, g = (rng.standard_normal((B, H, T, d)).astype(np.float32) for _ in range(4))
    Q, K, V = (Tensor(a) for a in (q, k, v))
    Qg, Kg, Vg = (Tensor(a, requires_grad=True) for a in (q, k, v))

    def fwd():
        with no_grad():
            return scaled_dot_product_attention(Q, K, V, is_causal=causal)

    def fwd_weights():
        with no_grad():
            return attend(Q, K, V, is_causal=causal)[0]                  # the weights too, on request

    def fwd_bwd():
        scaled_dot_product_attention(Qg, Kg, Vg, is_causal=causal).backward(g)

    ref_fwd = ref_fwd_bwd = None
    extra = {}
    if torch is not None:
        F = torch.nn.functional
        tq, tk, tv, tg = (torch.from_numpy(a) for a in (q, k, v, g))
        tqg, tkg, tvg = (torch.from_numpy(a.copy()).requires_grad_() for a in (q, k, v))

        def ref_fwd():
            with torch.no_grad():
                return F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)

        def ref_fwd_bwd():
            F.scaled_dot_product_attention(tqg, tkg, tvg, is_causal=causal).backward(tg)

        extra['max_abs_diff'] = float(np.abs(fwd().data - ref_fwd().numpy()).max())
    name = _name(B, H, T, d, causal)
    cases = [Case('attention sdpa forward', name, fwd, ref_fwd, target=target, extra=extra),
             Case('attention sdpa fwd+bwd', name, fwd_bwd, ref_fwd_bwd, target=target)]
    if T >= 512:
        cases.append(Case('attention sdpa fwd+weights', name, fwd_weights, ref_fwd, target=None))
    return cases


def _mha_cases(torch, B, H, T, d, causal, target):
    E = H * d
    rng = np.random.default_rng(0)
    x, g = (rng.standard_normal((B, T, E)).astype(np.float32) for _ in range(2))
    manual_seed(0)
    ours = MultiheadAttention(E, H, batch_first=True)
    mask = causal_mask(T) if causal else None
    X, Xg = Tensor(x), Tensor(x, requires_grad=True)

    def fwd():
        ours.eval()
        with no_grad():
            return ours(X, X, X, attn_mask=mask, is_causal=causal, need_weights=False)[0]

    def fwd_bwd():
        ours.train()
        out, _ = ours(Xg, Xg, Xg, attn_mask=mask, is_causal=causal, need_weights=False)
        out.backward(g)

    ref_fwd = ref_fwd_bwd = None
    extra = {}
    if torch is not None:
        theirs = torch.nn.MultiheadAttention(E, H, batch_first=True)
        theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
        tx, tg = torch.from_numpy(x), torch.from_numpy(g)
        txg = torch.from_numpy(x.copy()).requires_grad_()
        tmask = None if mask is None else torch.from_numpy(mask)

        def ref_fwd():
            theirs.eval()
            with torch.no_grad():
                return theirs(tx, tx, tx, attn_mask=tmask, is_causal=causal, need_weights=False)[0]

        def ref_fwd_bwd():
            theirs.train()
            out, _ = theirs(txg, txg, txg, attn_mask=tmask, is_causal=causal, need_weights=False)
            out.backward(tg)

        extra['max_abs_diff'] = float(np.abs(fwd().data - ref_fwd().numpy()).max())
    name = f"B={B} T={T} E={E} H={H}" + (" causal" if causal else "")
    return [Case('attention mha forward', name, fwd, ref_fwd, ref_name='torch', target=target, extra=extra),
            Case('attention mha fwd+bwd', name, fwd_bwd, ref_fwd_bwd, ref_name='torch', target=target)]


def cases(quick: bool = False) -> list:
    torch = torch_or_none()
    shapes = [(64, 8, 10, 16), (1, 12, 512, 64)] if quick else [(64, 8, 10, 16), (8, 12, 512, 64)]
    out = []
    for B, H, T, d in shapes:
        for causal in (False, True):
            out += _sdpa_cases(torch, B, H, T, d, causal, TARGETS[T])
    for B, H, T, d in shapes:
        for causal in (False, True):
            out += _mha_cases(torch, B, H, T, d, causal, TARGETS[T])
    return out
