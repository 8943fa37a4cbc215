"""tinytorch.positional as a library: table accuracy, in-place semantics, gradients, errors, PyTorch parity."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinytorch import Tensor, gradcheck, manual_seed, no_grad
from tinytorch.embeddings import Embedding, embedding
from tinytorch.positional import (AddPositions, LearnedPositionalEmbedding, PositionalEncoding, add_positions,
                                  compare_positional_encodings, plot_position_similarity, sinusoidal_table)


def exact_table(max_len, d_model):
    "The encoding in float64 (Vaswani et al., 2017, §3.5)."
    angle = np.arange(max_len)[:, None] * np.exp(np.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
    table = np.empty((max_len, d_model))
    table[:, 0::2], table[:, 1::2] = np.sin(angle), np.cos(angle[:, :d_model // 2])
    return table


@pytest.mark.parametrize('d_model', [1, 2, 3, 64, 128, 129, 512, 768])
def test_table_within_1e6_of_float64_at_every_position_to_5000(d_model):
    table = sinusoidal_table(5000, d_model)
    assert table.dtype == np.float32 and table.shape == (5000, d_model)
    assert np.abs(table - exact_table(5000, d_model)).max() < 1e-6


def test_table_stays_accurate_far_beyond_5000():
    assert np.abs(sinusoidal_table(100_000, 16) - exact_table(100_000, 16)).max() < 1e-6


def test_the_float32_recipe_is_not_accurate_enough():
    "Why the float64-angle recipe exists: float32 angles are off by ~4e-4 at position 5000."
    pos = np.arange(5000, dtype=np.float32)[:, None]
    freq = np.exp(np.arange(0, 128, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / 128))
    assert np.abs(np.sin(pos * freq) - exact_table(5000, 128)[:, 0::2]).max() > 1e-4


@settings(max_examples=30, deadline=None)
@given(max_len=st.integers(1, 3000), d_model=st.integers(1, 40))
def test_table_property(max_len, d_model):
    table = sinusoidal_table(max_len, d_model)
    assert np.abs(table - exact_table(max_len, d_model)).max() < 1e-6
    np.testing.assert_array_equal(table[:1], exact_table(1, d_model).astype(np.float32))   # sin 0, cos 0


def test_longer_tables_extend_shorter_ones():
    np.testing.assert_array_equal(sinusoidal_table(300, 10)[:100], sinusoidal_table(100, 10))


@pytest.mark.parametrize('args,message', [((0, 8), 'max_len must be a positive integer'),
                                          ((8, 0), 'd_model must be a positive integer'),
                                          ((8.0, 4), 'max_len must be a positive integer'),
                                          ((8, True), 'd_model must be a positive integer')])
def test_table_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        sinusoidal_table(*args)


# --- PositionalEncoding: values, shapes, errors
def test_forward_values_and_shapes():
    pe = PositionalEncoding(6, max_len=20)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 7, 6)).astype(np.float32)
    np.testing.assert_allclose(pe(x).data, x + sinusoidal_table(7, 6), rtol=1e-6)
    np.testing.assert_allclose(pe(x[0]).data, x[0] + sinusoidal_table(7, 6), rtol=1e-6)
    assert pe(np.zeros((2, 4, 3, 6))).shape == (2, 4, 3, 6)
    assert pe(np.zeros((2, 0, 6))).shape == (2, 0, 6)
    assert pe(x.astype(np.float64)).dtype == np.float32                     # arrays become float32 Tensors
    assert pe(Tensor(x, dtype=np.float64)).dtype == np.float64
    assert list(pe.state_dict()) == [] and repr(pe).startswith('PositionalEncoding(\n  d_model=6, max_len=20')


@pytest.mark.parametrize('shape,message', [((1, 21, 6), 'the sequence has 21 positions but max_len is 20'),
                                           ((1, 5, 4), r'expects input of shape \(batch, seq_len, 6\)'),
                                           ((6,), 'got \\(6,\\)')])
def test_forward_errors(shape, message):
    with pytest.raises(ValueError, match=message):
        PositionalEncoding(6, max_len=20)(np.zeros(shape))


def test_constructor_errors():
    with pytest.raises(ValueError, match='d_model must be a positive integer'):
        PositionalEncoding(0)
    with pytest.raises(ValueError, match='max_len must be a positive integer'):
        PositionalEncoding(4, max_len=-1)
    with pytest.raises(ValueError, match=r'p must be in \[0, 1\)'):
        PositionalEncoding(4, dropout=1.5)


def test_small_batches_add_a_cached_broadcast_table():
    "Small batches get the table broadcast to their shape, cached per shape; the sums are the same as without it."
    pe = PositionalEncoding(16, max_len=64)
    rng = np.random.default_rng(0)
    for shape in [(4, 10, 16), (3, 7, 16), (4, 10, 16), (2, 3, 5, 16), (10, 16)]:
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(pe(x).data, x + sinusoidal_table(64, 16)[:shape[-2]])
    assert set(pe._broadcast) == {(4, 10, 16), (3, 7, 16), (2, 3, 5, 16)}   # 2-D input: the table as it is
    big = (1 << 20) // (4 * 16 * 64) + 1                  # a batch just over 1 MB: not cached
    pe(np.zeros((big, 64, 16), dtype=np.float32))
    assert (big, 64, 16) not in pe._broadcast
    pe.pe = Tensor(np.ones((64, 16)))                     # a replaced buffer is never served from the cache
    np.testing.assert_array_equal(pe(np.zeros((4, 10, 16))).data, np.ones((4, 10, 16)))
    for i in range(20):                                   # the cache stays small
        pe(np.zeros((1, i + 1, 16)))
    assert len(pe._broadcast) <= 8


def test_dropout_in_training_only():
    manual_seed(0)
    pe = PositionalEncoding(8, max_len=10, dropout=0.5)
    x = np.ones((4, 10, 8), np.float32)
    out = pe(x).data
    assert (out == 0).mean() > 0.3
    kept = out != 0
    np.testing.assert_allclose(out[kept], (2 * (x + sinusoidal_table(10, 8)))[kept], rtol=1e-6)
    pe.eval()
    np.testing.assert_allclose(pe(x).data, x + sinusoidal_table(10, 8), rtol=1e-6)


# --- in place, where autograd allows
def _lookup(seed=0, shape=(2, 5), V=30, d=8):
    rng = np.random.default_rng(seed)
    W = Tensor(rng.standard_normal((V, d)), requires_grad=True)
    return W, rng.integers(0, V, shape)


def test_in_place_on_a_fresh_intermediate_with_correct_gradients():
    W, ids = _lookup()
    pe = PositionalEncoding(8, max_len=16)
    e = embedding(ids, W)
    out = pe(e)
    assert out.data is e.data                                       # overwritten: nothing else held it
    np.testing.assert_allclose(out.data, W.data[ids] + sinusoidal_table(5, 8), rtol=1e-6)
    g = np.random.default_rng(1).standard_normal(out.shape)
    (out * 1.0).backward(g)
    want = np.zeros_like(W.data)
    np.add.at(want, ids.reshape(-1), g.reshape(-1, 8))
    np.testing.assert_allclose(W.grad, want, rtol=1e-6)
    assert gradcheck(lambda w: pe(embedding(ids, w)) * 2.0, W.data)


def test_never_in_place_on_your_tensors():
    pe = PositionalEncoding(8, max_len=16)
    x = np.random.default_rng(2).standard_normal((2, 5, 8)).astype(np.float32)
    for leaf in (Tensor(x), Tensor(x, requires_grad=True)):
        before = leaf.data.copy()
        assert pe(leaf).data is not leaf.data
        np.testing.assert_array_equal(leaf.data, before)
    before = x.copy()
    pe(x)
    np.testing.assert_array_equal(x, before)


def test_not_in_place_when_an_operation_kept_the_array():
    W, ids = _lookup(3)
    pe = PositionalEncoding(8, max_len=16)
    s = embedding(ids, W).softmax()                                  # softmax keeps its output
    before = s.data.copy()
    assert pe(s).data is not s.data
    np.testing.assert_array_equal(s.data, before)

    e = embedding(ids, W)
    M = Tensor(np.random.default_rng(4).standard_normal((8, 3)), requires_grad=True)
    y = e @ M                                                       # matmul keeps its inputs
    before = e.data.copy()
    out = pe(e)
    assert out.data is not e.data
    np.testing.assert_array_equal(e.data, before)
    (y.sum() + out.sum()).backward()
    np.testing.assert_allclose(M.grad, before.reshape(-1, 8).T @ np.ones((10, 3)), rtol=1e-6)   # uncorrupted


def test_not_in_place_on_views_of_shared_arrays():
    W, ids = _lookup(5)
    pe = PositionalEncoding(8, max_len=16)
    e = embedding(ids, W)
    r = e.reshape(2, 5, 8)                                           # r's array is a view of e's
    before = e.data.copy()
    assert pe(r).data is not r.data
    np.testing.assert_array_equal(e.data, before)
    assert pe(r).data is not r.data and pe(embedding(ids, W)[:, :3]).shape == (2, 3, 8)


def test_no_grad_results_are_leaves_so_out_of_place():
    W, ids = _lookup(6)
    with no_grad():
        e = embedding(ids, W)
        assert PositionalEncoding(8, max_len=16)(e).data is not e.data


def test_add_positions_function_and_table_gradient():
    rng = np.random.default_rng(7)
    x, t = rng.standard_normal((3, 4, 5)), rng.standard_normal((4, 5))
    assert gradcheck(lambda a, b: add_positions(a * 1.0, b), x, t)
    assert gradcheck(lambda a, b: AddPositions.apply(a, b), x, t)


# --- learned positions
def test_learned_positions():
    manual_seed(0)
    lpe = LearnedPositionalEmbedding(32, 8)
    assert list(lpe.state_dict()) == ['weight'] and lpe.weight.shape == (32, 8)
    assert abs(lpe.weight.data.std() - 0.02) < 0.003
    x = np.random.default_rng(8).standard_normal((2, 5, 8))
    np.testing.assert_allclose(lpe(x).data, x + lpe.weight.data[:5], rtol=1e-6)
    out = lpe(Tensor(x))
    out.backward(np.ones((2, 5, 8)))
    np.testing.assert_array_equal(lpe.weight.grad[:5], 2 * np.ones((5, 8), np.float32))
    assert not lpe.weight.grad[5:].any()
    with pytest.raises(ValueError, match='the sequence has 33 positions but max_len is 32'):
        lpe(np.zeros((1, 33, 8)))
    with pytest.raises(ValueError, match='LearnedPositionalEmbedding expects input'):
        lpe(np.zeros((1, 3, 9)))
    assert gradcheck(lambda w: add_positions(Tensor(x) * 1.0, w[:5]), np.random.default_rng(9).standard_normal((7, 8)))


def test_learned_positions_in_place_on_an_embedding():
    W, ids = _lookup(10)
    lpe = LearnedPositionalEmbedding(16, 8)
    e = embedding(ids, W)
    out = lpe(e)
    assert out.data is e.data
    out.backward(np.ones(out.shape))
    np.testing.assert_array_equal(lpe.weight.grad[:5], 2 * np.ones((5, 8), np.float32))


def test_compare_returns_data():
    rows = {r['encoding']: r for r in compare_positional_encodings(d_model=8, max_len=16, batch_size=2, seq_len=4,
                                                                  repeats=1)}
    assert rows['sinusoidal']['parameters'] == 0 and rows['learned']['parameters'] == 128
    assert rows['sinusoidal']['extrapolates'] and not rows['learned']['extrapolates']
    from matplotlib.figure import Figure
    assert isinstance(plot_position_similarity({'a': sinusoidal_table(4, 2), 'b': np.eye(4)}), Figure)


# --- PyTorch
@pytest.mark.torch
def test_tutorial_module_of_pytorch_agrees_to_its_float32_error():
    torch = pytest.importorskip('torch')
    max_len, d = 5000, 64
    position = torch.arange(max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
    pe = torch.zeros(max_len, d)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    ours, exact = sinusoidal_table(max_len, d), exact_table(max_len, d)
    torch_error = np.abs(pe.numpy() - exact).max()
    assert np.abs(ours - exact).max() < 1e-6 < torch_error < 1e-3
    np.testing.assert_allclose(ours[:100], pe.numpy()[:100], atol=1e-5)       # near the start they agree


@pytest.mark.torch
def test_embedding_plus_positions_gradient_matches_torch():
    torch = pytest.importorskip('torch')
    rng = np.random.default_rng(11)
    ids, g = rng.integers(0, 40, (3, 12)), rng.standard_normal((3, 12, 16)).astype(np.float32)
    layer = torch.nn.Embedding(40, 16, padding_idx=0)
    emb = Embedding(40, 16, padding_idx=0)
    emb.load_state_dict({'weight': layer.weight.detach().numpy()})
    table = torch.from_numpy(sinusoidal_table(12, 16))
    out_t = layer(torch.from_numpy(ids)) + table
    out_t.backward(torch.from_numpy(g))
    out = PositionalEncoding(16, max_len=12)(emb(ids))
    out.backward(g)
    np.testing.assert_allclose(out.data, out_t.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(emb.weight.grad, layer.weight.grad.numpy(), atol=1e-5)
