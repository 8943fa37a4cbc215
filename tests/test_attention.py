"""tinytorch.attention as a library: the fused kernel's gradients, blocking, masks, properties, errors, memory,
and PyTorch's scaled_dot_product_attention and nn.MultiheadAttention where torch is installed."""
import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinytorch.attention as attention
from tinytorch.attention import (MultiheadAttention, causal_mask, merge_heads, padding_mask,
                                 attend as sdpa, split_heads)     # attend: the function that can return weights
from tinytorch.nn import manual_seed
from tinytorch.tensor import Tensor, gradcheck, masked_fill, no_grad, softmax

RNG = np.random.default_rng(0)


def randn(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def composed(q, k, v, mask=None, scale=None):
    "Attention from module 00's operations, op by op (a mask: True = not allowed)."
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    if mask is not None:
        scores = masked_fill(scores, mask, -np.inf)
    return softmax(scores, axis=-1) @ v


@pytest.fixture
def small_blocks(monkeypatch):
    "Tiny blocks, so that small inputs run through every path of the blocking (head groups, row slices)."
    monkeypatch.setattr(attention, '_BLOCK_BYTES', 256)
    monkeypatch.setattr(attention, '_CAUSAL_ROWS', 3)


# ---------------------------------------------------------------- masks

def test_causal_mask_matches_torch_convention():
    m = causal_mask(4)
    assert m.dtype == np.bool_ and m.shape == (4, 4)
    assert (m == (np.arange(4)[None, :] > np.arange(4)[:, None])).all()     # True = key after the query
    assert causal_mask(2, 5)[1].tolist() == [False, False, True, True, True]


def test_padding_mask():
    ids = np.array([[5, 6, 0, 0], [1, 2, 3, 4]])
    assert padding_mask(ids).tolist() == [[False, False, True, True], [False] * 4]
    assert padding_mask(Tensor(ids, dtype=np.int64), pad_id=4)[1, 3]
    with pytest.raises(TypeError, match='integer token ids'):
        padding_mask(np.zeros((2, 2)))


# ---------------------------------------------------------------- the kernel against composed operations

@pytest.mark.parametrize('shape', [(5, 4), (2, 5, 4), (2, 3, 5, 4)])
def test_forward_and_grads_match_composed(shape):
    q, k, v, g = randn(*shape), randn(*shape[:-2], 6, 4), randn(*shape[:-2], 6, 3), randn(*shape[:-1], 3)
    ours = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    ref = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    out, w = sdpa(*ours)
    expected = composed(*ref)
    np.testing.assert_allclose(out.data, expected.data, atol=1e-5)
    assert out.dtype == w.dtype == np.float32 and w.shape == shape[:-1] + (6,)
    out.backward(g)
    expected.backward(g)
    for a, b in zip(ours, ref):
        assert a.grad.dtype == np.float32
        np.testing.assert_allclose(a.grad, b.grad, atol=1e-5)


@pytest.mark.parametrize('need_weights', [True, False])   # False: the scores are kept packed and unnormalised
@pytest.mark.parametrize('blocks', ['default', 'small'])
@pytest.mark.parametrize('masks', ['none', 'causal', 'padding', 'causal+padding', 'float', 'bool 4-D'])
def test_gradcheck(blocks, masks, need_weights, request):
    if blocks == 'small':
        request.getfixturevalue('small_blocks')
    q, k, v = randn(2, 3, 7, 4, dtype=np.float64), randn(2, 3, 7, 4, dtype=np.float64), randn(2, 3, 7, 2, dtype=np.float64)
    pad = np.zeros((2, 7), bool)
    pad[0, 5:] = True
    kw = {'none': {}, 'causal': dict(is_causal=True), 'padding': dict(key_padding_mask=pad),
          'causal+padding': dict(is_causal=True, key_padding_mask=pad), 'float': dict(attn_mask=randn(7, 7, dtype=np.float64)),
          'bool 4-D': dict(attn_mask=RNG.random((2, 3, 7, 7)) < 0.3)}[masks]
    gradcheck(lambda a, b, c: sdpa(a, b, c, need_weights=need_weights, **kw)[0], q, k, v)


def test_gradcheck_cross_attention_and_scale():
    q, k, v = randn(2, 4, 3, dtype=np.float64), randn(2, 6, 3, dtype=np.float64), randn(2, 6, 5, dtype=np.float64)
    gradcheck(lambda a, b, c: sdpa(a, b, c, scale=0.3)[0], q, k, v)
    gradcheck(lambda a, b, c: sdpa(a, b, c, is_causal=True)[0], q, k, v)     # L < S: the last keys are never seen


@pytest.mark.parametrize('need_weights', [True, False])
def test_gradcheck_dropout_with_a_fixed_generator(small_blocks, need_weights):
    q, k, v = (randn(1, 2, 5, 3, dtype=np.float64) for _ in range(3))
    fn = lambda a, b, c: sdpa(a, b, c, dropout_p=0.3, is_causal=True, generator=np.random.default_rng(1),
                              need_weights=need_weights)[0]
    gradcheck(fn, q, k, v)


@pytest.mark.parametrize('need_weights', [True, False])
def test_no_queries_give_zero_gradients(need_weights):
    "With L = 0 no block runs; the backward's uninitialised gradient buffers must still come back as zeros."
    q, k, v = (Tensor(a, requires_grad=True) for a in (randn(2, 0, 4), randn(2, 3, 4), randn(2, 3, 5)))
    out = sdpa(q, k, v, need_weights=need_weights)[0]
    out.backward(np.zeros(out.shape, np.float32))
    assert not k.grad.any() and not v.grad.any() and q.grad.shape == (2, 0, 4)


@pytest.mark.parametrize('dropout_p', [0.0, 0.4])
@pytest.mark.parametrize('blocks', ['default', 'small'])
def test_training_path_matches_the_weights_path(blocks, dropout_p, request):
    "Without need_weights the backward reads packed, unnormalised scores: same output and gradients in float32."
    if blocks == 'small':
        request.getfixturevalue('small_blocks')
    q, k, v, g = randn(2, 3, 9, 4), randn(2, 3, 9, 4), randn(2, 3, 9, 5), randn(2, 3, 9, 5)
    results = []
    for need_weights in (True, False):
        ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
        out = sdpa(*ts, is_causal=True, dropout_p=dropout_p, generator=np.random.default_rng(3),
                   need_weights=need_weights)[0]
        out.backward(g)
        results.append([out.data] + [t.grad for t in ts])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_blocking_does_not_change_results(monkeypatch):
    q, k, v, g = randn(3, 4, 9, 5), randn(3, 4, 11, 5), randn(3, 4, 11, 2), randn(3, 4, 9, 2)
    pad = RNG.random((3, 11)) < 0.3

    def run():
        ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
        out, w = sdpa(*ts, key_padding_mask=pad, is_causal=True)
        out.backward(g)
        return [out.data, w.data] + [t.grad for t in ts]

    default = run()
    for block_bytes, rows in [(64, 2), (500, 4), (5000, 1), (10**6, 3)]:
        monkeypatch.setattr(attention, '_BLOCK_BYTES', block_bytes)
        monkeypatch.setattr(attention, '_CAUSAL_ROWS', rows)
        for a, b in zip(run(), default):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_long_causal_sequence_skips_blocks_and_matches_composed():
    q, k, v = randn(1, 2, 300, 8), randn(1, 2, 300, 8), randn(1, 2, 300, 8)
    assert list(attention._blocks(1, 2, 300, 300, True, 4))[0][3] == attention._CAUSAL_ROWS
    out, w = sdpa(q, k, v, is_causal=True)
    expected = composed(Tensor(q), Tensor(k), Tensor(v), mask=causal_mask(300))
    np.testing.assert_allclose(out.data, expected.data, atol=1e-5)
    assert (w.data[..., causal_mask(300)] == 0).all()
    out2, w2 = sdpa(q, k, v, attn_mask=causal_mask(300))        # a boolean causal mask takes the same path
    np.testing.assert_allclose(out2.data, out.data, atol=1e-6)
    assert attention._future_masked(attention._attention_bias(causal_mask(300), None, False, (1, 2), 300, 300,
                                                              np.dtype(np.float32)), 300, 300)


def test_float_mask_is_added_to_the_scores():
    q, k, v = randn(2, 4, 3), randn(2, 5, 3), randn(2, 5, 2)
    bias = randn(4, 5)
    out, w = sdpa(q, k, v, attn_mask=bias)
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(3) + bias
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(w.data, p, atol=1e-6)
    np.testing.assert_allclose(out.data, p @ v, atol=1e-5)


# ---------------------------------------------------------------- masked rows, dtype, memory

def test_fully_masked_rows_give_zeros_and_zero_gradients():
    q, k, v = (Tensor(randn(2, 3, 4, 5), requires_grad=True) for _ in range(3))
    mask = np.zeros((4, 4), bool)
    mask[1] = True                                              # query 1 may see nothing
    pad = np.array([[True] * 4, [False] * 4])                   # sequence 0 is all padding
    out, w = sdpa(q, k, v, attn_mask=mask, key_padding_mask=pad)
    assert np.isfinite(out.data).all() and np.isfinite(w.data).all()
    assert (out.data[0] == 0).all() and (out.data[1, :, 1] == 0).all()
    assert (w.data[0] == 0).all()
    out.backward(np.ones(out.shape))
    for t in (q, k, v):
        assert np.isfinite(t.grad).all()
    assert (q.grad[0] == 0).all() and (q.grad[1, :, 1] == 0).all()


def test_float32_throughout_and_float64_kept():
    out, w = sdpa(randn(2, 3, 4), randn(2, 5, 4), randn(2, 5, 4), attn_mask=np.zeros((3, 5)))  # a float64 mask
    assert out.dtype == w.dtype == np.float32
    out, w = sdpa(*(Tensor(randn(2, 3, 4), dtype=np.float64) for _ in range(3)))
    assert out.dtype == w.dtype == np.float64


def test_need_weights_false():
    q = Tensor(randn(2, 3, 4))
    out, w = sdpa(q, q, q, need_weights=False)
    assert w is None
    np.testing.assert_allclose(out.data, sdpa(q, q, q)[0].data, atol=1e-6)


def test_inference_memory_does_not_grow_with_the_square_of_T():
    q, k, v = (Tensor(randn(2, 4, 1024, 16)) for _ in range(3))   # scores (2, 4, 1024, 1024): 32 MB
    with no_grad():
        tracemalloc.start()
        sdpa(q, k, v, need_weights=False)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 4 * 2**20, f'peak {peak / 2**20:.1f} MB'


def test_weights_are_outside_the_graph():
    q = Tensor(randn(1, 3, 2), requires_grad=True)
    out, w = sdpa(q, q, q)
    assert out.requires_grad and not w.requires_grad


def test_dropout():
    q = Tensor(randn(2, 4, 16, 8))
    ref, _ = sdpa(q, q, q)
    a, w = sdpa(q, q, q, dropout_p=0.5, generator=np.random.default_rng(0))
    b, _ = sdpa(q, q, q, dropout_p=0.5, generator=np.random.default_rng(0))
    np.testing.assert_array_equal(a.data, b.data)
    assert not np.allclose(a.data, ref.data)
    np.testing.assert_allclose(w.data.sum(-1), 1.0, atol=1e-5)   # the weights before dropout
    manual_seed(3)
    c, _ = sdpa(q, q, q, dropout_p=0.5)
    manual_seed(3)
    d, _ = sdpa(q, q, q, dropout_p=0.5)
    np.testing.assert_array_equal(c.data, d.data)
    # averaged over many draws, inverted dropout keeps the expectation
    many = np.mean([sdpa(q, q, q, dropout_p=0.5, need_weights=False)[0].data for _ in range(300)], axis=0)
    assert np.abs(many - ref.data).mean() < 0.05


# ---------------------------------------------------------------- properties

@st.composite
def attention_inputs(draw):
    B, L, S, E = (draw(st.integers(1, n)) for n in (3, 6, 7, 5))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    mask = rng.random((B, L, S)) < draw(st.sampled_from([0.0, 0.3, 0.7]))
    return [rng.standard_normal(s).astype(np.float32) * 3 for s in ((B, L, E), (B, S, E), (B, S, 2))] + [mask, rng]


@settings(max_examples=60, deadline=None)
@given(attention_inputs())
def test_rows_sum_to_one_over_allowed_keys_and_masked_keys_get_zero(inputs):
    q, k, v, mask, _ = inputs
    out, w = sdpa(q, k, v, attn_mask=mask)
    assert (w.data[mask] == 0).all()
    sums = w.data.sum(-1)
    allowed = (~mask).any(-1)
    np.testing.assert_allclose(sums[allowed], 1.0, atol=1e-5)
    assert (sums[~allowed] == 0).all() and (out.data[~allowed] == 0).all()


@settings(max_examples=60, deadline=None)
@given(attention_inputs())
def test_permuting_keys_with_values_leaves_the_output_unchanged(inputs):
    q, k, v, mask, rng = inputs
    perm = rng.permutation(k.shape[1])
    out, w = sdpa(q, k, v, attn_mask=mask)
    out_p, w_p = sdpa(q, k[:, perm], v[:, perm], attn_mask=mask[..., perm])
    np.testing.assert_allclose(out_p.data, out.data, atol=1e-5)
    np.testing.assert_allclose(w_p.data, w.data[..., perm], atol=1e-6)
    qperm = rng.permutation(q.shape[1])                          # permuting queries permutes the output rows
    out_q, _ = sdpa(q[:, qperm], k, v, attn_mask=mask[:, qperm])
    np.testing.assert_allclose(out_q.data, out.data[:, qperm], atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.sampled_from([1, 2, 4]))
def test_split_merge_heads_round_trip(B, T, H):
    x = Tensor(randn(B, T, 8))
    h = split_heads(x, H)
    assert h.shape == (B, H, T, 8 // H)
    np.testing.assert_array_equal(merge_heads(h).data, x.data)


# ---------------------------------------------------------------- errors

def test_errors():
    q, k, v = randn(2, 3, 4), randn(2, 5, 4), randn(2, 5, 6)
    with pytest.raises(ValueError, match='same number of features'):
        sdpa(q, randn(2, 5, 3), v)
    with pytest.raises(ValueError, match='same number of keys'):
        sdpa(q, k, randn(2, 4, 6))
    with pytest.raises(ValueError, match='same batch dimensions'):
        sdpa(q, randn(3, 5, 4), randn(3, 5, 6))
    with pytest.raises(ValueError, match='2 to 4 dimensions'):
        sdpa(randn(4), k, v)
    with pytest.raises(TypeError, match='same dtype'):
        sdpa(q, Tensor(k, dtype=np.float64), v)
    with pytest.raises(ValueError, match=r'attn_mask of shape \(3, 4\) does not broadcast'):
        sdpa(q, k, v, attn_mask=np.zeros((3, 4), bool))
    with pytest.raises(TypeError, match='attn_mask must be boolean .* got dtype int64'):
        sdpa(q, k, v, attn_mask=np.zeros((3, 5), np.int64))
    with pytest.raises(ValueError, match=r'key_padding_mask must have shape \(2, 5\)'):
        sdpa(q, k, v, key_padding_mask=np.zeros((2, 3), bool))
    with pytest.raises(TypeError, match='key_padding_mask must be boolean'):
        sdpa(q, k, v, key_padding_mask=np.zeros((2, 5), np.int32))
    with pytest.raises(ValueError, match='dropout_p'):
        sdpa(q, k, v, dropout_p=1.0)


def test_mha_errors():
    with pytest.raises(ValueError, match='128 is not divisible by 12') as err:
        MultiheadAttention(128, 12)
    assert '1, 2, 4, 8, 16, 32, 64, 128' in str(err.value)
    with pytest.raises(ValueError, match='positive integers'):
        MultiheadAttention(0, 2)
    with pytest.raises(ValueError, match='dropout'):
        MultiheadAttention(8, 2, dropout=1.5)
    mha = MultiheadAttention(8, 2, batch_first=True)
    x = randn(2, 3, 8)
    with pytest.raises(ValueError, match='embed_dim=8'):
        mha(randn(2, 3, 6), x, x)
    with pytest.raises(ValueError, match='same batch and length'):
        mha(x, randn(2, 4, 8), randn(2, 5, 8))
    with pytest.raises(ValueError, match=r'attn_mask must have shape \(L, S\) = \(3, 3\)'):
        mha(x, x, x, attn_mask=causal_mask(4))
    with pytest.raises(TypeError, match='attn_mask must be boolean'):
        mha(x, x, x, attn_mask=np.zeros((3, 3), int))
    with pytest.raises(ValueError, match='key_padding_mask must have shape'):
        mha(x, x, x, key_padding_mask=np.zeros((3, 3), bool))


# ---------------------------------------------------------------- MultiheadAttention

def test_mha_parameters_init_and_modes():
    manual_seed(0)
    mha = MultiheadAttention(64, 4)
    assert [(n, p.shape) for n, p in mha.named_parameters()] == [
        ('in_proj_weight', (192, 64)), ('in_proj_bias', (192,)), ('out_proj.weight', (64, 64)), ('out_proj.bias', (64,))]
    bound = math.sqrt(6 / (64 + 192))                            # Xavier-uniform over the (3E, E) matrix
    assert np.abs(mha.in_proj_weight.data).max() <= bound and np.abs(mha.in_proj_weight.data).max() > 0.9 * bound
    assert (mha.in_proj_bias.data == 0).all() and (mha.out_proj.bias.data == 0).all()
    assert np.abs(mha.out_proj.weight.data).max() <= 1 / math.sqrt(64)
    assert [n for n, _ in MultiheadAttention(8, 2, bias=False).named_parameters()] == ['in_proj_weight', 'out_proj.weight']
    assert 'num_heads=4' in repr(mha)


def test_mha_dropout_only_in_training():
    manual_seed(0)
    mha = MultiheadAttention(8, 2, dropout=0.5, batch_first=True)
    x = Tensor(randn(2, 6, 8))
    a, _ = mha(x, x, x)
    b, _ = mha(x, x, x)
    assert not np.allclose(a.data, b.data)
    mha.eval()
    c, _ = mha(x, x, x)
    d, _ = mha(x, x, x)
    np.testing.assert_array_equal(c.data, d.data)


def test_mha_layouts():
    manual_seed(0)
    mha = MultiheadAttention(8, 2, batch_first=True)
    seq_first = MultiheadAttention(8, 2, batch_first=False)
    seq_first.load_state_dict(mha.state_dict())
    x, mem = randn(2, 3, 8), randn(2, 5, 8)
    out, w = mha(x, mem, mem)
    out_t, w_t = seq_first(x.transpose(1, 0, 2), mem.transpose(1, 0, 2), mem.transpose(1, 0, 2))
    np.testing.assert_allclose(out_t.data.transpose(1, 0, 2), out.data, atol=1e-6)
    np.testing.assert_allclose(w_t.data, w.data, atol=1e-6)
    out_u, w_u = mha(x[1], mem[1], mem[1], key_padding_mask=np.zeros(5, bool))    # unbatched
    np.testing.assert_allclose(out_u.data, out.data[1], atol=1e-6)
    assert w_u.shape == (3, 5)
    per_head_mask = np.zeros((2 * 2, 3, 5), bool)
    per_head_mask[1, :, 0] = True                                # batch 0, head 1 may not see key 0
    _, wh = mha(x, mem, mem, attn_mask=per_head_mask, average_attn_weights=False)
    assert (wh.data[0, 1, :, 0] == 0).all() and (wh.data[0, 0, :, 0] > 0).all()


def test_mha_gradcheck():
    manual_seed(0)
    mha = MultiheadAttention(6, 3, batch_first=True)
    pad = np.array([[False, False, True], [False, False, False]])
    gradcheck(lambda a, m: mha(a, m, m, key_padding_mask=pad)[0], randn(2, 2, 6), randn(2, 3, 6))
    gradcheck(lambda a: mha(a, a, a, is_causal=True)[0], randn(2, 3, 6))


@pytest.mark.parametrize('is_causal', [True, False])
def test_self_attention_gradcheck(is_causal):
    "The packed operation's gradients, into x and into the input projection's weight and bias, in float64."
    manual_seed(0)
    mha = MultiheadAttention(6, 3, batch_first=True)
    gradcheck(lambda a: attention.self_attention(mha, a, is_causal=is_causal), randn(2, 4, 6))
    gradcheck(lambda a, w, b: _self_attention_with(3, a, w, b, is_causal), randn(2, 4, 6), randn(18, 6), randn(18))


def _self_attention_with(num_heads, a, w_in, b_in, is_causal):
    "self_attention's computation before out_proj, with the input projection's weights as inputs."
    from tinytorch.nn import linear
    B, T, E = a.shape
    qkv = linear(a, w_in, b_in)
    heads = attention.SelfAttention.apply(
        qkv, num_heads=num_heads, bias=attention._attention_bias(None, None, is_causal, (B, num_heads), T, T, qkv.dtype),
        causal=is_causal, scale=1.0 / math.sqrt(E // num_heads), keep_weights=True)
    return heads                                                # (B, T, E): the heads come out merged


@pytest.mark.parametrize('dropout', [0.0, 0.3])
def test_self_attention_is_the_modules_function(dropout):
    "One input GEMM and the packed operation: the output and every gradient of mha(x, x, x), dropout included."
    manual_seed(0)
    mha = MultiheadAttention(8, 2, dropout=dropout, batch_first=True)
    x, g = randn(3, 7, 8), randn(3, 7, 8)
    results = []
    for fast in (True, False):
        manual_seed(1)                                        # the same dropout draws on both paths
        xt = Tensor(x, requires_grad=True)
        out = attention.self_attention(mha, xt, is_causal=True) if fast else mha(xt, xt, xt, is_causal=True)[0]
        mha.zero_grad()
        out.backward(g)
        results.append([out.data, xt.grad] + [p.grad for p in mha.parameters()])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_self_attention_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match='batch_first=True'):
        attention.self_attention(MultiheadAttention(8, 2), randn(3, 2, 8))
    with pytest.raises(ValueError, match='embed_dim=8'):
        attention.self_attention(MultiheadAttention(8, 2, batch_first=True), randn(3, 2, 4))


@pytest.mark.torch
def test_self_attention_matches_torch():
    from conftest import torch_or_skip
    torch = torch_or_skip()
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    ours = MultiheadAttention(8, 2, batch_first=True)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x, g = randn(2, 6, 8), randn(2, 6, 8)
    tx = torch.tensor(x, requires_grad=True)
    expected = theirs(tx, tx, tx, attn_mask=torch.from_numpy(causal_mask(6)), need_weights=False)[0]
    expected.backward(torch.from_numpy(g))
    xt = Tensor(x, requires_grad=True)
    out = attention.self_attention(ours, xt, is_causal=True)
    out.backward(g)
    np.testing.assert_allclose(out.data, expected.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(xt.grad, tx.grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours.in_proj_weight.grad, theirs.in_proj_weight.grad.numpy(), atol=1e-5)


def test_mha_parameter_gradients_match_finite_differences():
    manual_seed(0)
    mha = MultiheadAttention(4, 2, batch_first=True)
    x, g = randn(1, 3, 4), randn(1, 3, 4)
    out, _ = mha(x, x, x, attn_mask=causal_mask(3))
    out.backward(g)
    w = mha.in_proj_weight
    analytic, eps = w.grad.copy(), 1e-2
    for idx in [(0, 0), (5, 3), (9, 1)]:                        # one entry of W^Q, W^K, W^V
        orig = w.data[idx]
        w.data[idx] = orig + eps
        hi = (mha(x, x, x, attn_mask=causal_mask(3))[0].data * g).sum()
        w.data[idx] = orig - eps
        lo = (mha(x, x, x, attn_mask=causal_mask(3))[0].data * g).sum()
        w.data[idx] = orig
        assert abs((hi - lo) / (2 * eps) - analytic[idx]) < 1e-3


# ---------------------------------------------------------------- PyTorch

def _inverted(mask):
    "Our boolean masks say True = not allowed; torch's functional SDPA says True = allowed."
    return None if mask is None else ~mask


@pytest.mark.torch
@pytest.mark.parametrize('case', ['plain', 'causal', 'bool mask', 'float mask', 'cross'])
def test_sdpa_matches_torch(case):
    torch = pytest.importorskip('torch')
    F = torch.nn.functional
    L, S = (5, 7) if case == 'cross' else (6, 6)
    q, k, v, g = randn(2, 3, L, 8), randn(2, 3, S, 8), randn(2, 3, S, 4), randn(2, 3, L, 4)
    mask = {'bool mask': RNG.random((L, S)) < 0.3, 'float mask': randn(L, S)}.get(case)
    if case == 'bool mask':
        mask[:, 0] = False                                       # torch gives NaN for rows with no allowed key
    ours = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    out, _ = sdpa(*ours, attn_mask=mask, is_causal=case == 'causal')
    out.backward(g)
    theirs = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    tmask = None if mask is None else torch.from_numpy(_inverted(mask) if mask.dtype == bool else mask)
    tout = F.scaled_dot_product_attention(*theirs, attn_mask=tmask, is_causal=case == 'causal')
    tout.backward(torch.from_numpy(g))
    np.testing.assert_allclose(out.data, tout.detach().numpy(), atol=2e-6)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.grad, b.grad.numpy(), atol=2e-5)


def _torch_mha(torch, E, H, **kw):
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(E, H, batch_first=True, **kw)
    ours = MultiheadAttention(E, H, batch_first=True, **kw)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})   # unchanged
    return ours, theirs


@pytest.mark.torch
@pytest.mark.parametrize('case', ['self', 'cross', 'self causal', 'cross causal', 'cross padding',
                                  'self causal+padding', 'cross causal+padding', 'per head', 'float mask', 'no bias'])
def test_mha_matches_torch(case):
    torch = pytest.importorskip('torch')
    E, H, B, L, S = 16, 4, 3, 5, 7
    ours, theirs = _torch_mha(torch, E, H, **({'bias': False} if case == 'no bias' else {}))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x, mem = randn(B, L, E), randn(B, S, E)
    pad = np.zeros((B, S), bool)
    pad[0, 5:] = True
    pad[2, 3:] = True
    cross = 'cross' in case or case == 'per head'
    kw = {}
    if 'causal' in case:
        kw['attn_mask'] = causal_mask(L, S if cross else L)
    if case == 'float mask':
        kw['attn_mask'] = randn(L, L)
    if 'padding' in case:
        kw['key_padding_mask'] = pad if cross else pad[:, :L]
    if case == 'per head':
        kw['average_attn_weights'] = False
    ins = [Tensor(x, requires_grad=True)] + ([Tensor(mem, requires_grad=True)] * 2 if cross else [])
    tins = [torch.tensor(x, requires_grad=True)] + ([torch.tensor(mem, requires_grad=True)] * 2 if cross else [])
    args, targs = (ins * 3 if not cross else ins), (tins * 3 if not cross else tins)
    out, w = ours(*args, **kw)
    tout, tw = theirs(*targs, **{n: torch.from_numpy(a) if isinstance(a, np.ndarray) else a for n, a in kw.items()})
    g = randn(*out.shape)
    out.backward(g)
    tout.backward(torch.from_numpy(g))
    np.testing.assert_allclose(out.data, tout.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(w.data, tw.detach().numpy(), atol=1e-6)
    for a, b in zip(ins, tins):
        np.testing.assert_allclose(a.grad, b.grad.numpy(), atol=1e-5)
    for (name, p), (tname, tp) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert name == tname
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), atol=5e-5)


@pytest.mark.torch
def test_mha_state_dict_round_trip_and_seq_first_match_torch():
    torch = pytest.importorskip('torch')
    manual_seed(0)
    ours = MultiheadAttention(12, 3, batch_first=False)
    theirs = torch.nn.MultiheadAttention(12, 3)                  # PyTorch's default layout: (T, B, E)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    ours.eval(), theirs.eval()
    x = randn(4, 2, 12)
    out, w = ours(x, x, x, need_weights=True)
    with torch.no_grad():
        tout, tw = theirs(*(torch.from_numpy(x),) * 3)
    np.testing.assert_allclose(out.data, tout.numpy(), atol=1e-6)
    np.testing.assert_allclose(w.data, tw.numpy(), atol=1e-6)
    assert ours(x, x, x, need_weights=False)[1] is None


@pytest.mark.torch
def test_mha_init_matches_torch_statistically():
    torch = pytest.importorskip('torch')
    manual_seed(0)
    ours = MultiheadAttention(256, 8)
    theirs = torch.nn.MultiheadAttention(256, 8)
    for (name, p), (_, tp) in zip(ours.named_parameters(), theirs.named_parameters()):
        a, b = p.data, tp.detach().numpy()
        assert abs(a.std() - b.std()) <= 0.05 * b.std() + 1e-12, name
        assert abs(np.abs(a).max() - np.abs(b).max()) <= 0.05 * np.abs(b).max() + 1e-12, name


def test_edge_shapes():
    q, k, v = randn(2, 4, 3), randn(2, 5, 3), randn(2, 5, 2)
    column = np.array([[0.0], [-np.inf], [0.0], [1.0]])          # (L, 1): broadcast over the keys
    out, w = sdpa(q, k, v, attn_mask=column)
    assert (out.data[:, 1] == 0).all() and np.isfinite(out.data).all()
    out, w = sdpa(randn(2, 0, 3), k, v)                         # no queries
    assert out.shape == (2, 0, 2) and w.shape == (2, 0, 5)
    out, w = sdpa(randn(1, 3), randn(1, 3), randn(1, 4))         # one query, one key: weight 1
    assert w.data.tolist() == [[1.0]]
