"""tinytorch.embeddings as a library: the lookup and its gradient in every regime, the module, errors, PyTorch parity."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinytorch.embeddings as E
from tinytorch import Tensor, gradcheck, manual_seed, no_grad
from tinytorch.embeddings import (Embedding, check_token_ids, embedding, embedding_backward, embedding_backward_naive,
                                  embedding_design, embedding_forward, embedding_memory, init_embedding_,
                                  lookup_throughput, nearest_neighbours, pca_2d)


def one_hot_reference(grad, ids, num_embeddings, padding_idx=None):
    "dL/dE = O^T dL/dX in float64, with O the one-hot matrix of the ids: the definition, not an algorithm."
    d = grad.shape[-1]
    onehot = np.zeros((ids.size, num_embeddings))
    onehot[np.arange(ids.size), ids.reshape(-1)] = 1.0
    out = onehot.T @ grad.reshape(-1, d).astype(np.float64)
    if padding_idx is not None:
        out[padding_idx] = 0.0
    return out


# (num_embeddings, ids shape, d): the regimes of embedding_backward
REGIMES = {
    'all distinct': (1000, (4, 5), 3),
    'few distinct, small batch (one-hot product)': (7, (6, 50), 4),
    'few distinct, many repeats (grid)': (7, (8, 5000), 8),
    'few distinct, several grid blocks': (5, (3, 20_000), 20),
    'many distinct, some repeated (pairwise)': (300, (2, 150), 5),
    'one id only': (4, (1, 33), 2),
    'single token': (4, (1,), 3),
    'middle vocabulary': (200, (16, 128), 3),
    'middle vocabulary, long rows (sorted runs in float64)': (200, (2, 1000), 512),
    'few distinct, long rows, small batch (sorted runs in one piece)': (20, (64, 10), 768),
}


@pytest.fixture(params=['auto', 'grid', 'one-hot', 'sorted runs'])
def few_ids_path(request, monkeypatch):
    """Run a test with the automatic choice for few distinct ids, or with one of its methods forced: the grid,
    the one-hot product, or the sorted runs (gathered in one piece when the gradient fits a block)."""
    if request.param != 'auto':
        monkeypatch.setattr(E, '_ONE_HOT_WORK', 10 ** 12 if request.param == 'one-hot' else 0)
        monkeypatch.setattr(E, '_RUN_ROW_BYTES', 0 if request.param == 'sorted runs' else 10 ** 12)
    return request.param


@pytest.mark.parametrize('name', REGIMES)
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_backward_matches_the_definition(name, dtype, few_ids_path):
    V, shape, d = REGIMES[name]
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, shape)
    grad = rng.standard_normal(shape + (d,)).astype(dtype)
    got = embedding_backward(grad, ids, V)
    assert got.dtype == dtype and got.shape == (V, d)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got, one_hot_reference(grad, ids, V), atol=tol * math.sqrt(ids.size))
    np.testing.assert_allclose(got, embedding_backward_naive(grad, ids, V), atol=tol * math.sqrt(ids.size))


@pytest.mark.parametrize('name', REGIMES)
def test_backward_padding_row_is_zero(name, few_ids_path):
    V, shape, d = REGIMES[name]
    rng = np.random.default_rng(1)
    ids = rng.integers(0, V, shape)
    pad = int(ids.reshape(-1)[0])                         # a padding id that does occur
    grad = rng.standard_normal(shape + (d,))
    got = embedding_backward(grad, ids, V, padding_idx=pad)
    assert not got[pad].any()
    np.testing.assert_allclose(got, one_hot_reference(grad, ids, V, padding_idx=pad), atol=1e-9)


def test_backward_with_64k_distinct_columns_uses_wide_keys():
    "Enough (block, id) pairs that the grid's sort keys no longer fit 16 bits."
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 4096, 8 * 4096 * 9)
    grad = rng.standard_normal((ids.size, 1))
    want = np.bincount(ids, weights=grad[:, 0], minlength=4096)[:, None]
    np.testing.assert_allclose(embedding_backward(grad, ids, 4096), want, atol=1e-9)


def test_backward_zipf_ids():
    rng = np.random.default_rng(3)
    ids = np.minimum(rng.zipf(1.2, 5000), 2000) - 1            # one id thousands of times, most once
    grad = rng.standard_normal((5000, 3))
    np.testing.assert_allclose(embedding_backward(grad, ids, 2000), one_hot_reference(grad, ids, 2000), atol=1e-9)


def test_backward_accepts_any_integer_ids_and_strided_grads():
    rng = np.random.default_rng(4)
    grad = rng.standard_normal((6, 40, 3))[:, ::2]            # not contiguous
    ids = rng.integers(0, 9, (6, 20))
    want = one_hot_reference(grad, ids, 9)
    for dt in (np.int32, np.uint8, np.uint64, np.int16):
        np.testing.assert_allclose(embedding_backward(grad, ids.astype(dt), 9), want, atol=1e-10)


def test_backward_empty_batch():
    out = embedding_backward(np.zeros((2, 0, 3), np.float32), np.zeros((2, 0), np.int64), 5)
    assert out.shape == (5, 3) and not out.any()


@settings(max_examples=60, deadline=None)
@given(V=st.integers(1, 60), n=st.integers(1, 400), d=st.integers(1, 6), seed=st.integers(0, 2 ** 16),
       skew=st.booleans(), pad=st.booleans())
def test_backward_property(V, n, d, seed, skew, pad):
    """Small problems: with the one-hot product, then with the grid and the sorted runs forced (their bookkeeping
    is then exercised)."""
    rng = np.random.default_rng(seed)
    ids = (np.minimum(rng.zipf(1.5, n), V) - 1) if skew else rng.integers(0, V, n)
    grad = rng.standard_normal((n, d))
    padding_idx = int(ids[0]) if pad else None
    want = one_hot_reference(grad, ids, V, padding_idx)
    np.testing.assert_allclose(embedding_backward(grad, ids, V, padding_idx), want, atol=1e-9)
    saved = E._ONE_HOT_WORK, E._RUN_ROW_BYTES
    try:
        for run_row_bytes in (10 ** 12, 0):                    # the grid, then the sorted runs
            E._ONE_HOT_WORK, E._RUN_ROW_BYTES = 0, run_row_bytes
            np.testing.assert_allclose(embedding_backward(grad, ids, V, padding_idx), want, atol=1e-9)
    finally:
        E._ONE_HOT_WORK, E._RUN_ROW_BYTES = saved


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 5), min_size=0, max_size=3), V=st.integers(1, 30), d=st.integers(1, 5),
       seed=st.integers(0, 2 ** 16))
def test_forward_property(shape, V, d, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, shape)
    W = rng.standard_normal((V, d)).astype(np.float32)
    out = embedding_forward(W, check_token_ids(ids, V))
    assert out.shape == tuple(shape) + (d,)
    np.testing.assert_array_equal(out, W[ids])


@pytest.mark.parametrize('V,shape', [(4, (3, 40)), (50, (2, 30)), (1000, (2, 3))])
def test_gradcheck(V, shape):
    rng = np.random.default_rng(5)
    ids = rng.integers(0, V, shape)
    assert gradcheck(lambda w: embedding(ids, w) * 3.0, rng.standard_normal((V, 2)))


def test_gradient_flows_through_a_model_and_padding_stays_zero():
    manual_seed(0)
    emb = Embedding(12, 4, padding_idx=0)
    ids = np.array([[3, 0, 3, 5], [0, 0, 11, 3]])
    out = (emb(ids) * emb(ids)).sum()
    out.backward()
    want = np.zeros((12, 4), np.float32)
    np.add.at(want, ids.reshape(-1), 2 * emb.weight.data[ids.reshape(-1)])
    want[0] = 0
    np.testing.assert_allclose(emb.weight.grad, want, rtol=1e-6)
    assert not emb.weight.data[0].any()


# --- errors are part of the interface
@pytest.mark.parametrize('ids,V,message', [
    (np.array([1.0, 2.0]), 4, 'token ids must be integers, got dtype float64'),
    (Tensor([1, 2]), 4, 'Tensor() alone makes float32'),
    (np.array([True]), 4, 'must be integers'),
    (['a'], 4, 'must be integers'),
    (np.array([[0, 5], [9, 1]]), 4, 'token id 9 at position (1, 0) is out of range for an embedding table of 4 rows'),
    (np.array([[0, -5], [9, -1]]), 4, 'token id -5 at position (0, 1) is negative'),
    (np.array([[0, -5], [9, -1]]), 4, '3 of 4 ids are not'),
    (np.array([4], dtype=np.uint8), 4, 'token id 4'),
    (np.array([-2], dtype=np.int8), 4, 'token id -2'),
])
def test_bad_ids(ids, V, message):
    with pytest.raises((TypeError, IndexError)) as e:
        check_token_ids(ids, V)
    assert message in str(e.value)


def test_bad_ids_through_the_module():
    emb = Embedding(10, 2)
    with pytest.raises(IndexError, match='token id 10 at position'):
        emb([[1, 10]])
    with pytest.raises(TypeError, match='must be integers'):
        emb(Tensor([[1.0, 2.0]]))


@pytest.mark.parametrize('kwargs,message', [
    (dict(num_embeddings=0, embedding_dim=3), 'num_embeddings must be a positive integer'),
    (dict(num_embeddings=4, embedding_dim=2.5), 'embedding_dim must be a positive integer'),
    (dict(num_embeddings=4, embedding_dim=3, padding_idx=4), 'padding_idx must be an integer within num_embeddings=4'),
    (dict(num_embeddings=4, embedding_dim=3, padding_idx=-5), 'padding_idx'),
    (dict(num_embeddings=4, embedding_dim=3, padding_idx=True), 'padding_idx'),
    (dict(num_embeddings=4, embedding_dim=3, init='he'), "init must be one of 'normal', 'uniform', 'xavier'"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
        Embedding(**kwargs)


def test_from_pretrained_rejects_non_tables():
    with pytest.raises(ValueError, match=r'2-D table .* got shape \(3,\)'):
        Embedding.from_pretrained(np.zeros(3))


# --- the module
def test_module_basics():
    manual_seed(0)
    emb = Embedding(100, 8, padding_idx=-1)
    assert repr(emb) == 'Embedding(100, 8, padding_idx=99)'
    assert list(emb.state_dict()) == ['weight'] and emb.weight.shape == (100, 8)
    assert emb.weight.dtype == np.float32 and not emb.weight.data[99].any()
    assert emb([1, 2]).shape == (2, 8) and emb(np.array(5)).shape == (8,)
    assert emb.memory_usage() == dict(parameters=800, bytes=3200, megabytes=3200 / 2 ** 20, bytes_per_token=32,
                                      trainable=True)
    assert repr(Embedding(3, 2, init='uniform')) == "Embedding(3, 2, init='uniform')"


@pytest.mark.parametrize('init,bound', [('uniform', 1 / math.sqrt(64)), ('xavier', math.sqrt(6 / (500 + 64)))])
def test_inits(init, bound):
    manual_seed(1)
    w = Embedding(500, 64, init=init).weight.data
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.98 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.02 * bound


def test_normal_init_and_reset():
    manual_seed(2)
    emb = Embedding(2000, 32, padding_idx=3)
    assert abs(emb.weight.data.std() - 1) < 0.02
    emb.weight.data[3] = 7.0
    emb.reset_parameters()
    assert not emb.weight.data[3].any()
    w = Tensor(np.zeros((10, 4)))
    assert init_embedding_(w, 'uniform') is w


def test_freezing_and_pretrained():
    table = np.arange(20, dtype=np.float64).reshape(5, 4)
    frozen = Embedding.from_pretrained(table, padding_idx=2)
    assert frozen.weight.requires_grad is False and frozen.padding_idx == 2
    np.testing.assert_array_equal(frozen.weight.data[2], table[2])      # kept as given
    assert frozen([1, 2]).requires_grad is False
    emb = Embedding(5, 4)
    emb.requires_grad_(False)
    assert emb([1]).requires_grad is False and emb.memory_usage()['trainable'] is False
    emb.requires_grad_(True)
    out = emb([1, 1])
    out.backward(np.ones((2, 4)))
    np.testing.assert_array_equal(emb.weight.grad[1], 2 * np.ones(4, np.float32))


def test_no_grad_records_nothing():
    emb = Embedding(5, 4)
    with no_grad():
        out = emb([1, 2])
    assert out.requires_grad is False and out.is_leaf


# --- profiler
def test_profiler_functions_return_data():
    rows = lookup_throughput(Embedding(50, 4), batch_sizes=(1, 2), seq_lens=(3,), repeats=1)
    assert [(r['batch_size'], r['seq_len']) for r in rows] == [(1, 3), (2, 3)]
    assert all(r['ms'] > 0 and r['tokens_per_s'] > 0 and r['gb_per_s'] > 0 for r in rows)
    mem = embedding_memory((100,), (8,))
    assert mem == [dict(vocab_size=100, embedding_dim=8, parameters=800, megabytes=3200 / 2 ** 20,
                        training_megabytes=4 * 3200 / 2 ** 20)]
    design = {r['model']: r for r in embedding_design(batch_size=2)}
    assert design['Medium GPT']['token_parameters'] == 25_600_000
    assert design['Large GPT']['batch_activation_mb'] == 2 * 2048 * 1024 * 4 / 2 ** 20
    from matplotlib.figure import Figure
    assert isinstance(E.plot_lookup_throughput(rows), Figure)
    assert isinstance(E.plot_embedding_memory(embedding_memory((10, 20), (2, 4))), Figure)


def test_neighbours_and_pca():
    w = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [-1.0, 0.0], [0.0, 0.0]])
    ids, sims = nearest_neighbours(w, 0, k=3)
    np.testing.assert_array_equal(ids, [2, 1, 4])
    assert sims[0] == pytest.approx(0.9 / math.sqrt(0.82))
    xy = pca_2d(np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [4.0, 0.0, 1e-9]]))
    np.testing.assert_allclose(np.abs(xy[:, 0]), [2, 0, 2], atol=1e-6)


# --- PyTorch
@pytest.mark.torch
def test_forward_and_backward_match_torch():
    torch = pytest.importorskip('torch')
    rng = np.random.default_rng(6)
    for V, shape, pad in ((20, (8, 64), 0), (5000, (4, 300), 7), (1000, (3, 5), None)):
        layer = torch.nn.Embedding(V, 16, padding_idx=pad)
        ours = Embedding(V, 16, padding_idx=pad)
        ours.load_state_dict({k: v.detach().numpy() for k, v in layer.state_dict().items()})
        ids = rng.integers(0, V, shape)
        if pad is not None:
            ids[0, :3] = pad
        grad = rng.standard_normal(shape + (16,)).astype(np.float32)
        out_t = layer(torch.from_numpy(ids))
        out_t.backward(torch.from_numpy(grad))
        out = ours(ids)
        out.backward(grad)
        np.testing.assert_array_equal(out.data, out_t.detach().numpy())
        np.testing.assert_allclose(ours.weight.grad, layer.weight.grad.numpy(), atol=1e-5)


@pytest.mark.torch
def test_state_dicts_move_both_ways_and_init_matches_torch_default():
    torch = pytest.importorskip('torch')
    layer = torch.nn.Embedding(30, 6, padding_idx=2)
    ours = Embedding(30, 6, padding_idx=2)
    ours.load_state_dict({k: v.numpy() for k, v in layer.state_dict().items()})
    np.testing.assert_array_equal(ours.weight.data, layer.weight.detach().numpy())
    layer.load_state_dict({k: torch.from_numpy(v) for k, v in Embedding(30, 6).state_dict().items()})
    assert not torch.nn.Embedding(30, 6, padding_idx=2).weight.detach()[2].any()    # torch zeroes it too
    pretrained = torch.nn.Embedding.from_pretrained(torch.ones(3, 2))
    assert pretrained.weight.requires_grad is Embedding.from_pretrained(np.ones((3, 2))).weight.requires_grad


@pytest.mark.torch
@pytest.mark.parametrize('V,n', [(20, 4096), (50_000, 4096), (50_000, 300), (700, 5000)])
def test_kernel_matches_torch_kernel(V, n):
    torch = pytest.importorskip('torch')
    rng = np.random.default_rng(7)
    ids, grad = rng.integers(0, V, n), rng.standard_normal((n, 32)).astype(np.float32)
    want = torch.ops.aten.embedding_dense_backward(torch.from_numpy(grad), torch.from_numpy(ids), V, 3, False)
    np.testing.assert_allclose(embedding_backward(grad, ids, V, padding_idx=3), want.numpy(), atol=2e-4)
