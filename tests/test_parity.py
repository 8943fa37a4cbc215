"""Where tinytorch uses PyTorch's names it behaves like PyTorch: GELU's tanh approximation in the layers, weight
sharing in the encoder-decoder, configuration checks that name the field. PyTorch is the oracle where installed."""
import math

import numpy as np
import pytest

from tinytorch.nn import manual_seed
from tinytorch.tensor import Tensor, gelu
from tinytorch.training import load_checkpoint, save_checkpoint
from tinytorch.transformer import (GPT, Seq2SeqTransformer, TransformerConfig, TransformerDecoderLayer,
                                   TransformerEncoderLayer, feed_forward, parameter_counts)

RNG = np.random.default_rng(13)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _torch():
    torch = pytest.importorskip('torch')
    torch.set_num_threads(1)
    return torch


def _load_from_torch(ours, theirs):
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})


# ---------------------------------------------------------------- GELU's tanh approximation (GPT-2's gelu_new)

@pytest.mark.torch
@pytest.mark.parametrize('norm_first', [False, True])
@pytest.mark.parametrize('kind', ['encoder', 'decoder'])
def test_gelu_tanh_layers_match_torch(kind, norm_first):
    torch = _torch()
    torch.manual_seed(0)
    tanh_gelu = lambda x: torch.nn.functional.gelu(x, approximate='tanh')
    args = dict(dim_feedforward=32, dropout=0.1, batch_first=True, norm_first=norm_first)
    if kind == 'encoder':
        theirs = torch.nn.TransformerEncoderLayer(16, 4, activation=tanh_gelu, **args).eval()
        ours = TransformerEncoderLayer(16, 4, activation='gelu_tanh', **args).eval()
    else:
        theirs = torch.nn.TransformerDecoderLayer(16, 4, activation=tanh_gelu, **args).eval()
        ours = TransformerDecoderLayer(16, 4, activation='gelu_tanh', **args).eval()
    _load_from_torch(ours, theirs)
    inputs = [randn(2, 5, 16)] + ([randn(2, 6, 16)] if kind == 'decoder' else [])
    with torch.no_grad():
        expected = theirs(*map(torch.from_numpy, inputs)).numpy()
    np.testing.assert_allclose(ours(*map(Tensor, inputs)).data, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.torch
def test_layer_accepts_a_callable_activation_like_torch():
    torch = _torch()
    torch.manual_seed(1)
    theirs = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=torch.nn.functional.gelu,
                                              batch_first=True)
    ours = TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=gelu, batch_first=True)
    _load_from_torch(ours, theirs)
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
    torch = _torch()
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
    torch = _torch()
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
