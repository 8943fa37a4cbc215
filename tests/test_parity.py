"""Where tinytorch uses PyTorch's names it behaves like PyTorch: GELU's tanh approximation in the layers, weight
sharing in the encoder-decoder, configuration checks that name the field. PyTorch is the oracle where installed."""
import math
import re

import numpy as np
import pytest
from conftest import load_from_torch, torch_or_skip

from tinytorch.nn import manual_seed
from tinytorch.tensor import Tensor, gelu
from tinytorch.training import load_checkpoint, save_checkpoint
from tinytorch.transformer import (GPT, Seq2SeqTransformer, TransformerConfig, TransformerDecoderLayer,
                                   TransformerEncoderLayer, feed_forward, parameter_counts)

RNG = np.random.default_rng(13)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------- GELU's tanh approximation (GPT-2's gelu_new)

@pytest.mark.torch
@pytest.mark.parametrize('norm_first', [False, True])
@pytest.mark.parametrize('kind', ['encoder', 'decoder'])
def test_gelu_tanh_layers_match_torch(kind, norm_first):
    torch = torch_or_skip()
    torch.manual_seed(0)
    tanh_gelu = lambda x: torch.nn.functional.gelu(x, approximate='tanh')
    args = dict(dim_feedforward=32, dropout=0.1, batch_first=True, norm_first=norm_first)
    if kind == 'encoder':
        theirs = torch.nn.TransformerEncoderLayer(16, 4, activation=tanh_gelu, **args).eval()
        ours = TransformerEncoderLayer(16, 4, activation='gelu_tanh', **args).eval()
    else:
        theirs = torch.nn.TransformerDecoderLayer(16, 4, activation=tanh_gelu, **args).eval()
        ours = TransformerDecoderLayer(16, 4, activation='gelu_tanh', **args).eval()
    load_from_torch(ours, theirs)
    inputs = [randn(2, 5, 16)] + ([randn(2, 6, 16)] if kind == 'decoder' else [])
    with torch.no_grad():
        expected = theirs(*map(torch.from_numpy, inputs)).numpy()
    np.testing.assert_allclose(ours(*map(Tensor, inputs)).data, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.torch
def test_layer_accepts_a_callable_activation_like_torch():
    torch = torch_or_skip()
    torch.manual_seed(1)
    theirs = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=torch.nn.functional.gelu,
                                              batch_first=True)
    ours = TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=gelu, batch_first=True)
    load_from_torch(ours, theirs)
    x = randn(2, 3, 8)
    np.testing.assert_allclose(ours(Tensor(x)).data, theirs(torch.from_numpy(x)).detach().numpy(), atol=2e-5)


def test_feed_forward_gelu_tanh_is_the_tanh_formula_and_differs_from_exact():
    x, w1, b1, w2, b2 = randn(2, 3, 4), randn(8, 4), randn(8), randn(4, 8), randn(4)
    h = x @ w1.T + b1
    expected = (0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))) @ w2.T + b2
    got = feed_forward(*map(Tensor, (x, w1, b1, w2, b2)), activation='gelu_tanh').data
    np.testing.assert_allclose(got, expected, atol=1e-5)
    exact = feed_forward(*map(Tensor, (x, w1, b1, w2, b2)), activation='gelu').data
    assert np.abs(exact - got).max() > 1e-5


@pytest.mark.torch
def test_functional_gelu_tanh_and_its_gradient_match_torch():
    torch = torch_or_skip()
    x = np.linspace(-6, 6, 101, dtype=np.float32)
    t = torch.from_numpy(x).requires_grad_()
    y = torch.nn.functional.gelu(t, approximate='tanh')
    y.sum().backward()
    ours = Tensor(x, requires_grad=True)
    out = gelu(ours, approximate='tanh')
    out.sum().backward()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.data, y.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(ours.grad, t.grad.numpy(), atol=1e-5)


def test_gpt_config_selects_gelu_tanh():
    config = TransformerConfig(vocab_size=11, seq_len=6, d_model=8, nhead=2, num_encoder_layers=0,
                               num_decoder_layers=1, dim_feedforward=16, dropout=0.0, activation='gelu_tanh',
                               positional='learned', norm_first=True)
    manual_seed(0)
    model = GPT(config).eval()
    for p in model.parameters():
        p.data *= 50                  # GPT's initialisation (std 0.02) keeps activations where the two agree
    assert model.blocks[0].activation == 'gelu_tanh'
    assert TransformerConfig.preset('gpt2-small').activation == 'gelu_tanh'      # GPT-2's released code: gelu_new
    exact = GPT(config.replace(activation='gelu'))
    exact.load_state_dict(model.state_dict())
    idx = np.array([[1, 2, 3, 4]])
    assert np.abs(model(idx).data - exact.eval()(idx).data).max() > 1e-4


@pytest.mark.parametrize('activation', ['tanh', 'GELU', None, 3])
def test_bad_activation_names_the_choices(activation):
    with pytest.raises(ValueError, match="'gelu_tanh'"):
        TransformerEncoderLayer(8, 2, 16, activation=activation)


# ---------------------------------------------------------------- weight sharing (Vaswani et al. 2017, section 3.4)

BASE = dict(vocab_size=37000, d_model=512, nhead=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048)
BIG = dict(BASE, d_model=1024, nhead=16, dim_feedforward=4096)


@pytest.mark.parametrize('sizes, expected', [(BASE, 63_084_544), (BIG, 214_249_472)])
def test_paper_models_with_shared_embeddings_have_the_published_count(sizes, expected):
    config = TransformerConfig(**sizes, share_embeddings=True)
    assert config.num_parameters() == expected
    counts = parameter_counts(config)
    assert counts['embeddings'] == sizes['vocab_size'] * sizes['d_model'] and counts['output'] == 0


@pytest.mark.torch
@pytest.mark.filterwarnings('ignore::UserWarning')      # torch's notes about its nested-tensor fast path
def test_shared_count_is_torch_transformer_plus_one_matrix():
    torch = torch_or_skip()
    layers = torch.nn.Transformer(512, 8, 6, 6, 2048)
    assert (sum(p.numel() for p in layers.parameters()) + 37000 * 512
            == TransformerConfig(**BASE, share_embeddings=True).num_parameters())


@pytest.mark.parametrize('positional', ['sinusoidal', 'learned'])
def test_shared_model_has_one_matrix_and_the_formula_count(positional):
    config = TransformerConfig.preset('tiny', share_embeddings=True, positional=positional)
    manual_seed(0)
    model = Seq2SeqTransformer(config)
    assert model.src_tok_emb.weight is model.tgt_tok_emb.weight is model.generator.weight
    assert model.generator.bias is None
    assert sum(p.size for p in model.parameters()) == config.num_parameters()
    assert {'src_tok_emb.weight', 'tgt_tok_emb.weight', 'generator.weight'} <= set(model.state_dict())


def test_shared_matrix_gets_the_gradient_of_all_three_uses():
    config = TransformerConfig.preset('tiny', dropout=0.0, share_embeddings=True)
    manual_seed(1)
    shared = Seq2SeqTransformer(config)
    separate = Seq2SeqTransformer(config.replace(share_embeddings=False))
    state = shared.state_dict()
    state['generator.bias'] = np.zeros(config.vocab_size, np.float32)
    separate.load_state_dict(state)
    src, tgt = np.array([[3, 4, 5, 6, 0]]), np.array([[1, 6, 5, 4]])
    g = randn(1, 4, config.vocab_size)
    np.testing.assert_allclose(shared(src, tgt).data, separate(src, tgt).data, atol=1e-6)
    shared(src, tgt).backward(g)
    separate(src, tgt).backward(g)
    total = separate.src_tok_emb.weight.grad + separate.tgt_tok_emb.weight.grad + separate.generator.weight.grad
    np.testing.assert_allclose(shared.generator.weight.grad, total, atol=1e-5)


def test_shared_model_survives_a_checkpoint(tmp_path):
    config = TransformerConfig.preset('tiny', share_embeddings=True)
    manual_seed(2)
    model = Seq2SeqTransformer(config)
    save_checkpoint(tmp_path / 'shared.npz', model)
    manual_seed(3)
    other = Seq2SeqTransformer(config)
    load_checkpoint(tmp_path / 'shared.npz', other)
    np.testing.assert_array_equal(other.generator.weight.data, model.src_tok_emb.weight.data)
    assert other.src_tok_emb.weight is other.generator.weight


@pytest.mark.parametrize('changes, fragment', [
    (dict(share_embeddings=True, num_encoder_layers=0), 'share_embeddings'),
    (dict(share_embeddings=True, num_decoder_layers=0), 'encoder-decoder'),
    (dict(tie_weights=True), 'share_embeddings=True'),
])
def test_weight_sharing_errors_point_to_the_right_switch(changes, fragment):
    with pytest.raises(ValueError, match=fragment):
        TransformerConfig(**changes)


# ---------------------------------------------------------------- every field's check names the field

@pytest.mark.parametrize('field, value', [
    ('dropout', '0.1'), ('dropout', None), ('dropout', float('nan')), ('learning_rate', '1e-3'),
    ('learning_rate', float('inf')), ('layer_norm_eps', [1e-5]), ('norm_first', 'yes'), ('tie_weights', 1),
    ('share_embeddings', 'True'), ('activation', 1), ('positional', None), ('padding_idx', 1.0),
    ('vocab_size', '20'), ('num_epochs', 2.0), ('dropout', True),
])
def test_every_config_field_names_itself_when_its_type_is_wrong(field, value):
    with pytest.raises(ValueError, match=field) as e:
        TransformerConfig(**{field: value})
    assert repr(value) in str(e.value)


# ---------------------------------------------------------------- type promotion of binary operations (torch.result_type)

from tinytorch.tensor import concatenate, log_softmax, relu, result_type, softmax, stack, where  # noqa: E402

_TENSORS = dict(i64=([1, 2], np.int64), i32=([1, 2], np.int32), f32=([1.5, 2.0], np.float32),
                f64=([1.5, 2.0], np.float64), bool=([True, False], np.bool_))
_OTHERS = dict(int=lambda m: 3, float=lambda m: 2.5, bool=lambda m: True, np_float64=lambda m: np.float64(2.5),
               np_int64=lambda m: np.int64(3), np_float32=lambda m: np.float32(2.5),
               t0_f64=lambda m: m.tensor(2.5, dtype=m.float64), t0_i64=lambda m: m.tensor(3, dtype=m.int64),
               t_f32=lambda m: m.tensor([1.0, 4.0], dtype=m.float32),
               t_i64=lambda m: m.tensor([1, 4], dtype=m.int64))


class _Ours:
    "The subset of torch's namespace the cases use, in tinytorch."
    float64, float32, int64 = np.float64, np.float32, np.int64

    @staticmethod
    def tensor(data, dtype):
        return Tensor(data, dtype=dtype)


@pytest.mark.torch
@pytest.mark.parametrize('op', ['add', 'mul', 'truediv', 'radd', 'rmul', 'rtruediv', 'sub'])
@pytest.mark.parametrize('tensor', list(_TENSORS))
def test_binary_promotion_matches_torch(tensor, op):
    torch = torch_or_skip()
    data, dtype = _TENSORS[tensor]
    ours = Tensor(data, dtype=dtype)
    theirs = torch.from_numpy(np.array(data, dtype=dtype))
    for name, make in _OTHERS.items():
        if op == 'rtruediv' and name.startswith('t'):
            continue                          # torch treats a tensor passed to __rtruediv__ as a number
        try:
            expected = getattr(theirs, f'__{op}__')(make(torch)).numpy()
        except RuntimeError:                  # torch refuses bool subtraction: so must we
            with pytest.raises(TypeError, match='bool'):
                getattr(ours, f'__{op}__')(make(_Ours))
            continue
        got = getattr(ours, f'__{op}__')(make(_Ours)).data
        assert got.dtype == expected.dtype, (tensor, op, name, got.dtype, expected.dtype)
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=f'{tensor} {op} {name}')


def test_the_issue_example_promotes():
    out = Tensor([1, 2], dtype=np.int64) * 2.5
    assert out.dtype == np.float32 and out.data.tolist() == [2.5, 5.0]
    assert (2.5 * Tensor([1, 2], dtype=np.int64)).data.tolist() == [2.5, 5.0]
    assert (Tensor([True, False], dtype=bool) * 2.5).data.tolist() == [2.5, 0.0]
    assert (Tensor([3, 4], dtype=np.int64) / 2).data.tolist() == [1.5, 2.0]


@pytest.mark.torch
@pytest.mark.parametrize('exponent', [2, 0.5, 3.0])
@pytest.mark.parametrize('tensor', ['i64', 'f32', 'bool'])
def test_pow_promotion_matches_torch(tensor, exponent):
    torch = torch_or_skip()
    data, dtype = _TENSORS[tensor]
    expected = (torch.from_numpy(np.array(data, dtype=dtype)) ** exponent).numpy()
    got = (Tensor(data, dtype=dtype) ** exponent).data
    assert got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize('fn', ['exp', 'log'])
@pytest.mark.parametrize('tensor', ['i64', 'bool'])
def test_exp_and_log_of_integers_are_float32_like_torch(tensor, fn):
    torch = torch_or_skip()
    data, dtype = _TENSORS[tensor]
    expected = getattr(torch, fn)(torch.from_numpy(np.array(data, dtype=dtype))).numpy()
    got = getattr(Tensor(data, dtype=dtype), fn)().data
    assert got.dtype == expected.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.torch
def test_joins_and_where_promote_like_torch():
    torch = torch_or_skip()
    i, f = np.array([1, 2]), np.array([0.5, 1.5], np.float32)
    cond = np.array([True, False])
    pairs = [
        (where(cond, Tensor(i, dtype=np.int64), 2.5), torch.where(torch.from_numpy(cond), torch.from_numpy(i), 2.5)),
        (concatenate([Tensor(i, dtype=np.int64), Tensor(f)]), torch.cat([torch.from_numpy(i), torch.from_numpy(f)])),
        (stack([Tensor(i, dtype=np.int64), Tensor(f)]), torch.stack([torch.from_numpy(i), torch.from_numpy(f)])),
        (Tensor(i, dtype=np.int64) + Tensor(f), torch.from_numpy(i) + torch.from_numpy(f)),
    ]
    for ours, theirs in pairs:
        assert ours.dtype == theirs.numpy().dtype
        np.testing.assert_allclose(ours.data, theirs.numpy())


def test_float32_stays_float32_with_float64_numbers_and_arrays():
    x = Tensor([1.0, 2.0], requires_grad=True)
    for out in (x * np.float64(3.0), x + np.ones(2), x / np.array(2.0), x - 1, np.float64(2.0) * x):
        assert out.dtype == np.float32
    y = Tensor([1.0, 2.0], dtype=np.float64, requires_grad=True)
    z = (x * y).sum()                          # float32 with float64: float64, and gradients in each leaf's dtype
    z.backward()
    assert z.dtype == np.float64 and x.grad.dtype == np.float32 and y.grad.dtype == np.float64
    assert result_type(Tensor([1], dtype=np.int64), 2.5) == np.float32


@pytest.mark.parametrize('fn, name', [(softmax, 'softmax'), (log_softmax, 'log_softmax'), (gelu, 'gelu'),
                                      (lambda t: t.mean(), 'mean'), (lambda t: t.softmax(), 'softmax')])
@pytest.mark.parametrize('dtype', [np.bool_, np.int64])
def test_float_only_functions_name_the_dtype_they_need(fn, name, dtype):
    with pytest.raises(TypeError, match=f'{name} needs a floating-point tensor, got dtype {np.dtype(dtype)}'):
        fn(Tensor([1, 0], dtype=dtype))


def test_relu_of_bool_is_refused_like_torch():
    with pytest.raises(TypeError, match='bool'):
        relu(Tensor([True, False], dtype=bool))
    assert relu(Tensor([-1, 2], dtype=np.int64)).data.tolist() == [0, 2]


def test_bool_subtraction_is_refused_like_torch():
    mask = Tensor([True, False], dtype=bool)
    for f in (lambda: mask - mask, lambda: 1 - mask, lambda: Tensor([1.0, 2.0]) - mask):
        with pytest.raises(TypeError, match='bool'):
            f()


def test_strings_are_not_numbers():
    with pytest.raises(TypeError, match='str'):
        Tensor([1.0]) * 'a'


# ---------------------------------------------------------------- matmul errors name both shapes

@pytest.mark.parametrize('a, b, fragment', [
    ((2, 3), (4, 5), r'\(2, 3\) and \(4, 5\) cannot be multiplied \(2x3 and 4x5\)'),
    ((3,), (4,), r'\(3,\) and \(4,\)'),
    ((2, 3), (4,), r'\(2, 3\) and \(4,\)'),
    ((2, 2, 3), (3, 3, 5), r'batch dimensions \(2,\) and \(3,\)'),
    ((), (4,), 'at least 1 dimension'),
])
def test_matmul_errors_name_both_shapes(a, b, fragment):
    with pytest.raises(ValueError, match=fragment):
        Tensor(np.ones(a)) @ Tensor(np.ones(b))


@pytest.mark.torch
def test_matmul_shapes_that_torch_accepts_still_work():
    torch = torch_or_skip()
    for a, b in [((2, 3), (3, 4)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (4, 3)), ((2, 4), (4,)), ((4,), (4,))]:
        x, y = randn(*a), randn(*b)
        np.testing.assert_allclose((Tensor(x) @ Tensor(y)).data, (torch.from_numpy(x) @ torch.from_numpy(y)).numpy(),
                                   atol=1e-5)


# ---------------------------------------------------------------- a second backward through a freed graph

@pytest.mark.torch
def test_second_backward_raises_like_torch_unless_retain_graph():
    torch = torch_or_skip()
    x = randn(3)
    theirs = torch.from_numpy(x).requires_grad_()
    z = (theirs * theirs).sum()
    z.backward()
    with pytest.raises(RuntimeError, match='second time'):
        z.backward()
    ours = Tensor(x, requires_grad=True)
    z = (ours * ours).sum()
    z.backward()
    with pytest.raises(RuntimeError, match='retain_graph=True'):
        z.backward()
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), atol=1e-6)     # the failed pass added nothing


@pytest.mark.torch
def test_retain_graph_accumulates_like_torch():
    torch = torch_or_skip()
    x = randn(3)
    theirs = torch.from_numpy(x).requires_grad_()
    z = (theirs * theirs).exp().sum()
    z.backward(retain_graph=True)
    z.backward()
    ours = Tensor(x, requires_grad=True)
    z = (ours * ours).exp().sum()
    z.backward(retain_graph=True)
    z.backward()
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-5)


def test_backward_frees_what_the_graph_saved():
    x = Tensor(randn(4, 4), requires_grad=True)
    h = (x @ x).exp()
    h.sum().backward()
    assert h._ctx.saved_tensors is not None and all(not isinstance(v, np.ndarray) for v in vars(h._ctx).values())
    with pytest.raises(RuntimeError, match='Exp'):
        h.sum().backward()


# ---------------------------------------------------------------- scaled_dot_product_attention returns what PyTorch's does

from tinytorch.attention import MultiheadAttention, attend, causal_mask, scaled_dot_product_attention  # noqa: E402


@pytest.mark.torch
@pytest.mark.parametrize('is_causal', [False, True])
def test_sdpa_called_as_in_torch_returns_the_output_only(is_causal):
    torch = torch_or_skip()
    q, k, v = randn(2, 3, 5, 4), randn(2, 3, 5, 4), randn(2, 3, 5, 6)
    out = scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    expected = torch.nn.functional.scaled_dot_product_attention(*map(torch.from_numpy, (q, k, v)), is_causal=is_causal)
    assert isinstance(out, Tensor) and out.shape == tuple(expected.shape)
    np.testing.assert_allclose(out.data, expected.numpy(), atol=1e-6)


@pytest.mark.torch
def test_sdpa_positional_arguments_are_torchs():
    torch = torch_or_skip()
    q, k, v = randn(1, 4, 8), randn(1, 6, 8), randn(1, 6, 8)
    bias = randn(4, 6)                               # a float mask is added to the scores in both
    expected = torch.nn.functional.scaled_dot_product_attention(*map(torch.from_numpy, (q, k, v, bias)), 0.0, False,
                                                                scale=0.5)
    np.testing.assert_allclose(scaled_dot_product_attention(q, k, v, bias, 0.0, False, scale=0.5).data,
                               expected.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match='dropout_p must be a number'):
        scaled_dot_product_attention(q, k, v, None, np.zeros((1, 6), bool))   # the old 5th positional (a mask)


@pytest.mark.torch
def test_sdpa_boolean_mask_means_what_it_means_in_torch():
    "PyTorch's function: True = may attend (MultiheadAttention's and attend's masks say the opposite)."
    torch = torch_or_skip()
    q, k, v = randn(2, 3, 5, 4), randn(2, 3, 7, 4), randn(2, 3, 7, 2)
    allowed = np.random.default_rng(5).random((5, 7)) < 0.5
    allowed[:, 0] = True                             # every query sees a key (PyTorch gives NaN for none)
    expected = torch.nn.functional.scaled_dot_product_attention(*map(torch.from_numpy, (q, k, v)),
                                                                attn_mask=torch.from_numpy(allowed))
    out = scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    np.testing.assert_allclose(out.data, expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(attend(q, k, v, attn_mask=~allowed)[0].data, expected.numpy(), atol=1e-6)


def test_sdpa_does_not_materialise_the_weights_without_a_graph(monkeypatch):
    import tinytorch.attention as A
    made = []
    original = A.ScaledDotProductAttention.forward

    def spy(ctx, q, k, v, weights=None, **kw):
        made.append(weights)
        return original(ctx, q, k, v, weights=weights, **kw)
    monkeypatch.setattr(A.ScaledDotProductAttention, 'forward', staticmethod(spy))
    q = randn(2, 2, 64, 8)
    scaled_dot_product_attention(q, q, q, is_causal=True)
    out, w = attend(q, q, q, is_causal=True)
    assert made[0] is None and made[1] is not None and w.shape == (2, 2, 64, 64)
    np.testing.assert_allclose(out.data, scaled_dot_product_attention(q, q, q, is_causal=True).data, atol=1e-6)


def test_attend_returns_the_weights_the_figures_use():
    q = randn(3, 4)
    out, w = attend(q, q, q)
    np.testing.assert_allclose(w.data.sum(-1), np.ones(3), atol=1e-6)
    assert attend(q, q, q, need_weights=False)[1] is None


# ---------------------------------------------------------------- MultiheadAttention: PyTorch's defaults, kdim/vdim

@pytest.mark.torch
def test_mha_defaults_to_torchs_sequence_first_layout():
    torch = torch_or_skip()
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(8, 2).eval()                       # (L, N, E) by default
    ours = MultiheadAttention(8, 2).eval()
    assert ours.batch_first is False
    load_from_torch(ours, theirs)
    x = randn(5, 3, 8)                                                      # L=5, N=3
    with torch.no_grad():
        expected, w = theirs(*(torch.from_numpy(x),) * 3)
    out, ow = ours(x, x, x)
    np.testing.assert_allclose(out.data, expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(ow.data, w.numpy(), atol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize('kdim, vdim', [(6, 10), (8, 5), (12, 12)])
def test_mha_kdim_vdim_match_torch(kdim, vdim):
    torch = torch_or_skip()
    torch.manual_seed(1)
    theirs = torch.nn.MultiheadAttention(8, 2, kdim=kdim, vdim=vdim, batch_first=True)
    ours = MultiheadAttention(8, 2, kdim=kdim, vdim=vdim, batch_first=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(ours.state_dict()[k].shape == tuple(v.shape) for k, v in theirs.state_dict().items())
    load_from_torch(ours, theirs)
    x, key, value = randn(2, 3, 8), randn(2, 4, kdim), randn(2, 4, vdim)
    ins = [Tensor(a, requires_grad=True) for a in (x, key, value)]
    tins = [torch.from_numpy(a).requires_grad_() for a in (x, key, value)]
    out, w = ours(*ins)
    tout, tw = theirs(*tins)
    np.testing.assert_allclose(out.data, tout.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(w.data, tw.detach().numpy(), atol=1e-6)
    g = randn(*out.shape)
    out.backward(g)
    tout.backward(torch.from_numpy(g))
    for (name, p), (_, tp) in zip(ours.named_parameters(), theirs.named_parameters()):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), atol=5e-5, err_msg=name)
    with pytest.raises(ValueError, match=f'kdim={kdim}' if kdim != 8 else 'embed_dim=8'):
        ours(x, randn(2, 4, kdim + 1), value)


# ---------------------------------------------------------------- layers take arrays where MultiheadAttention does

@pytest.mark.torch
def test_encoder_layer_accepts_a_raw_array_like_torch_takes_a_tensor():
    torch = torch_or_skip()
    torch.manual_seed(2)
    theirs = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0).eval()
    ours = TransformerEncoderLayer(8, 2, 16, dropout=0.0).eval()
    load_from_torch(ours, theirs)
    x = randn(4, 2, 8)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours(x).data, expected, atol=2e-5)
    np.testing.assert_allclose(ours(x.astype(np.float64)).data, expected, atol=1e-4)


@pytest.mark.parametrize('bad, error, fragment', [
    (np.array([['a', 'b']]), TypeError, 'src must be a Tensor or an array of numbers'),
    (np.ones((2, 3, 8), np.int64), TypeError, 'token ids go through an Embedding'),
    (np.ones((2, 3, 5), np.float32), ValueError, r'd_model=8'),
    ({'x': 1}, TypeError, 'src must be'),
])
def test_encoder_layer_rejects_other_input_by_name(bad, error, fragment):
    with pytest.raises(error, match=fragment):
        TransformerEncoderLayer(8, 2, 16)(bad)


def test_decoder_layer_accepts_raw_arrays():
    layer = TransformerDecoderLayer(8, 2, 16, dropout=0.0, batch_first=True).eval()
    tgt, memory = randn(2, 3, 8), randn(2, 5, 8)
    np.testing.assert_allclose(layer(tgt, memory).data, layer(Tensor(tgt), Tensor(memory)).data, atol=1e-6)
    with pytest.raises(ValueError, match='memory must have shape'):
        layer(tgt, randn(2, 5, 4))


@pytest.mark.parametrize('op', ['linear', 'layer_norm', 'dropout', 'cross_entropy (logits)'])
@pytest.mark.parametrize('dtype', [np.bool_, np.int64])
def test_layer_functions_name_the_dtype_they_need(op, dtype):
    from tinytorch.nn import LayerNorm, Linear, cross_entropy, dropout
    x = Tensor([[1, 0, 1]], dtype=dtype)
    call = {'linear': lambda: Linear(3, 2)(x), 'layer_norm': lambda: LayerNorm(3)(x),
            'dropout': lambda: dropout(x, 0.5), 'cross_entropy (logits)': lambda: cross_entropy(x, np.array([1]))}[op]
    with pytest.raises(TypeError, match=re.escape(f'{op} needs a floating-point tensor, got dtype {np.dtype(dtype)}')):
        call()
