"""tinytorch.transformer as a library: configuration, parameter counts, gradients, generation, bad input, and
PyTorch's nn.Transformer classes where torch is installed (same weights, same outputs)."""
import math

import numpy as np
import pytest
from conftest import load_from_torch, torch_or_skip
from hypothesis import given, settings, strategies as st

from tinytorch.attention import causal_mask
from tinytorch.nn import manual_seed
from tinytorch.tensor import Tensor, gradcheck, no_grad, topological_order
from tinytorch.tokenization import BOS_ID, EOS_ID
from tinytorch.transformer import (GPT, PRESETS, FeedForwardFunction, Seq2SeqTransformer, Transformer,
                                   TransformerConfig, TransformerDecoder, TransformerDecoderLayer,
                                   TransformerEncoder, TransformerEncoderLayer, attention_maps, config_problems,
                                   feed_forward, generate, greedy_decode, memory_estimate, parameter_counts,
                                   sample_next)

RNG = np.random.default_rng(0)


def randn(*shape):
    return RNG.standard_normal(shape)


# ---------------------------------------------------------------- configuration

def test_guide_defaults():
    c = TransformerConfig()
    assert (c.vocab_size, c.seq_len, c.d_model, c.nhead, c.num_encoder_layers, c.num_decoder_layers,
            c.dim_feedforward, c.dropout, c.batch_size, c.num_epochs, c.learning_rate) == \
        (20, 10, 128, 8, 3, 3, 512, 0.1, 64, 50, 1e-4)
    assert c.head_dim == 16 and c.architecture == 'encoder-decoder' and c.padding_idx == 0
    assert TransformerConfig.preset('small') == c


@pytest.mark.parametrize('changes, fragment', [
    (dict(d_model=100), 'divisible by nhead'),
    (dict(nhead=0), 'nhead must be an integer >= 1'),
    (dict(d_model=39, nhead=13), 'even d_model'),
    (dict(dropout=1.0), 'dropout'),
    (dict(dropout=-0.5), 'dropout'),
    (dict(learning_rate=0.0), 'learning_rate'),
    (dict(vocab_size=0), 'vocab_size'),
    (dict(seq_len=2.5), 'seq_len'),
    (dict(num_encoder_layers=0, num_decoder_layers=0), 'at least one layer'),
    (dict(num_decoder_layers=-1), 'num_decoder_layers'),
    (dict(activation='tanh'), 'activation'),
    (dict(positional='rotary'), 'positional'),
    (dict(padding_idx=20), 'padding_idx'),
    (dict(layer_norm_eps=0.0), 'layer_norm_eps'),
    (dict(tie_weights=True), 'tie_weights'),
    (dict(batch_size=True), 'batch_size'),
])
def test_config_errors(changes, fragment):
    with pytest.raises(ValueError, match=fragment):
        TransformerConfig(**changes)


def test_config_lists_every_problem_at_once():
    with pytest.raises(ValueError) as e:
        TransformerConfig(d_model=100, dropout=2.0, activation='swish')
    message = str(e.value)
    assert message.startswith('TransformerConfig has 3 problems')
    assert '12.5' in message and 'nhead in [4, 5, 10]' in message and '96 or 104' in message


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 512), st.integers(1, 64))
def test_divisibility_property(d_model, nhead):
    c = TransformerConfig()
    c.d_model, c.nhead, c.positional = d_model, nhead, 'learned'
    problems = config_problems(c)
    assert any('divisible by nhead' in p for p in problems) == (d_model % nhead != 0)
    for p in problems:                        # every suggested head count divides d_model
        if 'divisible' in p:
            suggested = p.split('nhead in [')[1].split(']')[0]
            assert all(d_model % int(k) == 0 for k in suggested.split(', '))


def test_replace_validates_and_json_round_trips():
    c = TransformerConfig().replace(d_model=64, nhead=4)
    assert c.d_model == 64 and TransformerConfig(**__import__('json').loads(c.to_json())) == c
    with pytest.raises(ValueError, match='divisible'):
        c.replace(nhead=7)
    with pytest.raises(KeyError, match='unknown preset'):
        TransformerConfig.preset('gpt5')


# ---------------------------------------------------------------- parameter counts and memory

def test_published_parameter_counts():
    counts = parameter_counts(TransformerConfig())
    assert counts['encoder'] + counts['decoder'] == 1_389_056                       # nn.Transformer(128, 8, 3, 3, 512)
    assert TransformerConfig.preset('gpt2-small').num_parameters() == 124_439_808     # GPT-2 small's released weights
    assert TransformerConfig.preset('bert-base').num_parameters() + 593_664 == 109_482_240   # bert-base-uncased


@pytest.mark.parametrize('preset', ['tiny', 'small'])
@pytest.mark.parametrize('positional', ['sinusoidal', 'learned'])
def test_seq2seq_count_matches_formula(preset, positional):
    config = TransformerConfig.preset(preset, positional=positional)
    manual_seed(0)
    assert sum(p.size for p in Seq2SeqTransformer(config).parameters()) == config.num_parameters()


@pytest.mark.parametrize('changes', [dict(), dict(tie_weights=False), dict(norm_first=False),
                                     dict(positional='sinusoidal')])
def test_gpt_count_matches_formula(changes):
    config = TransformerConfig(vocab_size=37, seq_len=12, d_model=24, nhead=3, num_encoder_layers=0,
                               num_decoder_layers=3, dim_feedforward=40, activation='gelu', norm_first=True,
                               positional='learned', tie_weights=True).replace(**changes)
    assert sum(p.size for p in GPT(config).parameters()) == config.num_parameters()


@pytest.mark.slow
def test_gpt2_small_built_has_the_published_count():
    model = GPT(TransformerConfig.preset('gpt2-small', dropout=0.0))
    assert sum(p.size for p in model.parameters()) == 124_439_808


def _saved_bytes(loss, model) -> int:
    "Bytes of the arrays a graph keeps for backward, parameters excluded, each buffer once."
    params = {id(p.data) for p in model.parameters()}
    seen, total = set(), 0
    for t in topological_order(loss):
        if t._ctx is None:
            continue
        arrays = list(t._ctx.saved_tensors) + [v for v in vars(t._ctx).values() if isinstance(v, np.ndarray)]
        for a in arrays:
            if isinstance(a, np.ndarray):
                base = a if a.base is None else a.base
                if id(base) not in seen and id(base) not in params:
                    seen.add(id(base))
                    total += base.nbytes
    return total


@pytest.mark.parametrize('preset', ['tiny', 'small'])
def test_activation_estimate_is_close_to_the_graph(preset):
    from tinytorch.training import reversal_pairs, teacher_forcing
    config = TransformerConfig.preset(preset)
    manual_seed(0)
    model = Seq2SeqTransformer(config)
    loss, _, _ = teacher_forcing(model, *reversal_pairs(config.batch_size, config.seq_len, config.vocab_size))
    measured, estimate = _saved_bytes(loss, model), memory_estimate(config)['activations']
    assert abs(estimate - measured) / measured < 0.15, (estimate, measured)


def test_memory_estimate_parts():
    config = TransformerConfig()
    m = config.memory_estimate()
    P = config.num_parameters()
    assert (m['weights'], m['gradients'], m['adam']) == (4 * P, 4 * P, 8 * P)
    assert m['total'] == sum(v for k, v in m.items() if k != 'total')
    assert config.memory_estimate(batch_size=128)['activations'] == pytest.approx(2 * m['activations'], rel=1e-6)


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('p', [0.0, 0.4])
def test_feed_forward_gradcheck(bias, p):
    x, w1, b1, w2, b2 = randn(3, 4, 6), randn(10, 6), randn(10), randn(6, 10), randn(6)
    gen = lambda: np.random.default_rng(3)
    if bias:
        gradcheck(lambda *t: feed_forward(*t, p=p, generator=gen()), x, w1, b1, w2, b2)
    else:
        gradcheck(lambda a, u, v: feed_forward(a, u, None, v, None, p=p, generator=gen()), x, w1, w2)


def test_feed_forward_keeps_two_arrays():
    x = Tensor(randn(4, 5, 8), requires_grad=True)
    out = feed_forward(x, Tensor(randn(32, 8)), Tensor(randn(32)), Tensor(randn(8, 32)), Tensor(randn(8)), p=0.1)
    x2, hidden, _, _ = out._ctx.saved_tensors
    assert out._fn is FeedForwardFunction and x2.shape == (20, 8) and hidden.shape == (20, 32)
    assert not any(isinstance(v, np.ndarray) for v in vars(out._ctx).values())


@pytest.mark.parametrize('norm_first', [False, True])
def test_gradcheck_through_a_small_stack(norm_first):
    manual_seed(1)
    model = Transformer(8, 2, 2, 2, 12, dropout=0.0, batch_first=True, norm_first=norm_first)
    for p in model.parameters():              # gradcheck runs in float64; the check is on the graph, not the dtype
        p.data = p.data.astype(np.float64)
    src, tgt = randn(2, 5, 8), randn(2, 4, 8)
    pad = np.zeros((2, 5), bool)
    pad[1, -2:] = True
    fn = lambda a, b: model(a, b, tgt_mask=causal_mask(4), src_key_padding_mask=pad, memory_key_padding_mask=pad)
    gradcheck(fn, src, tgt, max_checks=40)
    _check_parameter_grads(model, lambda: fn(Tensor(src, dtype=np.float64), Tensor(tgt, dtype=np.float64)))


def _check_parameter_grads(model, forward, checks: int = 6, eps: float = 1e-6):
    "Backward's gradient of sum(w * forward()) for a few entries of every parameter, against central differences."
    rng = np.random.default_rng(0)
    out = forward()
    w = rng.standard_normal(out.shape)
    model.zero_grad()
    out.backward(w)
    for name, p in model.named_parameters():
        flat = p.data.reshape(-1)
        for i in rng.choice(flat.size, min(checks, flat.size), replace=False):
            orig = flat[i]
            with no_grad():
                flat[i] = orig + eps
                hi = float((forward().data * w).sum())
                flat[i] = orig - eps
                lo = float((forward().data * w).sum())
            flat[i] = orig
            numeric = (hi - lo) / (2 * eps)
            assert abs(p.grad.reshape(-1)[i] - numeric) <= 1e-5 + 1e-4 * abs(numeric), (name, i)


# ---------------------------------------------------------------- the layers

def test_encoder_layers_are_independent_copies():
    layer = TransformerEncoderLayer(8, 2, 16, batch_first=True)
    stack = TransformerEncoder(layer, 3)
    w = [l.linear1.weight for l in stack.layers]
    assert w[0] is not w[1] and np.array_equal(w[0].data, w[1].data)      # deep copies, as in PyTorch
    w[0].data += 1
    assert not np.array_equal(w[0].data, w[1].data)


def test_batch_first_false_is_seq_major():
    manual_seed(2)
    a = TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    b = TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=False)
    b.load_state_dict(a.state_dict())
    x = randn(3, 5, 8)
    np.testing.assert_allclose(b(Tensor(x.transpose(1, 0, 2))).data.transpose(1, 0, 2), a(Tensor(x)).data,
                               atol=1e-5)


def test_dropout_is_active_in_training_only():
    manual_seed(3)
    layer = TransformerEncoderLayer(8, 2, 16, dropout=0.5, batch_first=True)
    x = Tensor(randn(2, 4, 8))
    assert not np.allclose(layer(x).data, layer(x).data)
    layer.eval()
    np.testing.assert_array_equal(layer(x).data, layer(x).data)


# ---------------------------------------------------------------- models, decoding, generation

def test_seq2seq_bad_input():
    manual_seed(4)
    model = Seq2SeqTransformer(TransformerConfig.preset('tiny'))
    ok = np.array([[3, 4, 5]])
    with pytest.raises(ValueError, match='token id 20, outside the vocabulary 0..19'):
        model(np.array([[3, 20]]), ok)
    with pytest.raises(ValueError, match='token id -1'):
        model(ok, np.array([[1, -1]]))
    with pytest.raises(ValueError, match='longer than the positional table'):
        model(np.full((1, 12), 3), ok)
    with pytest.raises(TypeError, match='integer token ids'):
        model(np.array([[3.0, 4.0]]), ok)
    with pytest.raises(ValueError, match='same batch size'):
        model(np.array([[3], [4]]), ok)
    with pytest.raises(ValueError, match='needs encoder and decoder'):
        Seq2SeqTransformer(TransformerConfig(num_encoder_layers=0, positional='learned'))
    with pytest.raises(ValueError, match='decoder-only'):
        GPT(TransformerConfig())


def test_padding_does_not_change_the_output():
    manual_seed(5)
    model = Seq2SeqTransformer(TransformerConfig.preset('tiny', dropout=0.0)).eval()
    src = np.array([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])
    tgt = np.array([[1, 7, 6], [1, 9, 8]])
    with no_grad():
        both = model(src, tgt).data
        alone = model(src[:1, :3], tgt[:1]).data
    np.testing.assert_allclose(both[0], alone[0], atol=1e-5)


def test_greedy_decode_agrees_with_teacher_forcing():
    manual_seed(6)
    model = Seq2SeqTransformer(TransformerConfig.preset('tiny', dropout=0.0))
    src = np.random.default_rng(1).integers(3, 20, (8, 10))
    out = greedy_decode(model, src, bos=BOS_ID, eos=EOS_ID, max_len=6)
    with no_grad():
        forced = model.eval()(src, np.concatenate([np.full((8, 1), BOS_ID), out[:, :-1]], axis=1)).data.argmax(-1)
    alive = np.cumsum(np.concatenate([np.zeros((8, 1)), out[:, :-1] == EOS_ID], axis=1), axis=1) == 0
    np.testing.assert_array_equal(forced[alive], out[alive])


def _tiny_gpt(**changes):
    manual_seed(7)
    config = TransformerConfig(vocab_size=30, seq_len=12, d_model=16, nhead=2, num_encoder_layers=0,
                               num_decoder_layers=2, dim_feedforward=32, activation='gelu', norm_first=True,
                               positional='learned', tie_weights=True).replace(**changes)
    return GPT(config)


@pytest.mark.parametrize('changes', [dict(), dict(norm_first=False, tie_weights=False),
                                     dict(positional='sinusoidal'), dict(activation='relu')])
def test_gpt_cache_matches_full_forward(changes):
    gpt = _tiny_gpt(**changes).eval()
    idx = np.random.default_rng(2).integers(0, 30, (3, 12))
    with no_grad():
        full = gpt(idx).data
        cache = gpt.new_cache(3)
        parts = [gpt(idx[:, :4], cache).data] + [gpt(idx[:, i:i + 1], cache).data for i in range(4, 12)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=1e-5)


def test_gpt_is_causal_and_generates_the_same_with_and_without_cache():
    gpt = _tiny_gpt().eval()
    idx = np.random.default_rng(3).integers(0, 30, (2, 8))
    changed = idx.copy()
    changed[:, 5:] = (changed[:, 5:] + 1) % 30
    with no_grad():
        np.testing.assert_allclose(gpt(idx).data[:, :5], gpt(changed).data[:, :5], atol=1e-6)
    a = generate(gpt, idx[:, :4], 8, temperature=0.7, top_k=5, generator=np.random.default_rng(0))
    b = generate(gpt, idx[:, :4], 8, temperature=0.7, top_k=5, generator=np.random.default_rng(0), use_cache=False)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 12) and (a[:, :4] == idx[:, :4]).all()
    with pytest.raises(ValueError, match='context window'):
        generate(gpt, idx, 5)
    assert generate(gpt, idx, 6, use_cache=False).shape == (2, 14)     # the window slides without a cache
    with pytest.raises(ValueError, match='outside the vocabulary'):
        gpt(np.array([[30]]))


def test_gpt_weight_tying_shares_one_parameter():
    gpt = _tiny_gpt()
    assert gpt.lm_head.weight is gpt.tok_emb.weight
    assert len(list(gpt.parameters())) == len({id(p) for p in gpt.parameters()})
    assert 'lm_head.weight' in gpt.state_dict()


def test_sample_next_distribution():
    rng = np.random.default_rng(4)
    p = np.array([0.5, 0.25, 0.125, 0.125, 0.0])
    draws = np.concatenate([sample_next(np.log(np.tile(p, (100, 1)) + 1e-300), generator=rng) for _ in range(100)])
    freq = np.bincount(draws, minlength=5) / draws.size
    np.testing.assert_allclose(freq, p, atol=0.015)
    tempered = np.concatenate([sample_next(np.log(np.tile(p, (100, 1)) + 1e-300), temperature=2.0, generator=rng)
                               for _ in range(100)])
    q = np.sqrt(p) / np.sqrt(p).sum()
    np.testing.assert_allclose(np.bincount(tempered, minlength=5) / tempered.size, q, atol=0.015)


def test_attention_maps_names_and_shapes():
    manual_seed(8)
    model = Seq2SeqTransformer(TransformerConfig.preset('tiny'))
    maps = attention_maps(model, np.array([[3, 4, 5, 6]]), np.array([[1, 6, 5]]))
    assert maps['transformer.encoder.layers.0.self_attn'].shape == (1, 4, 4, 4)
    assert maps['transformer.decoder.layers.1.multihead_attn'].shape == (1, 4, 3, 4)
    np.testing.assert_allclose(maps['transformer.decoder.layers.0.self_attn'][0, 0], np.tril(
        maps['transformer.decoder.layers.0.self_attn'][0, 0]), atol=0)
    assert model.training and 'forward' not in vars(model.transformer.encoder.layers[0].self_attn)


# ---------------------------------------------------------------- PyTorch: same weights, same outputs

@pytest.mark.torch
@pytest.mark.parametrize('norm_first', [False, True])
@pytest.mark.parametrize('batch_first', [True, False])
@pytest.mark.parametrize('activation', ['relu', 'gelu'])
def test_encoder_layer_matches_torch(norm_first, batch_first, activation):
    torch = torch_or_skip()
    torch.manual_seed(0)
    theirs = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, activation=activation,
                                              batch_first=batch_first, norm_first=norm_first).eval()
    ours = TransformerEncoderLayer(16, 4, 32, dropout=0.1, activation=activation, batch_first=batch_first,
                                   norm_first=norm_first).eval()
    load_from_torch(ours, theirs)
    x = randn(3, 6, 16).astype(np.float32)
    pad = np.zeros((3, 6), bool)
    pad[0, 4:] = pad[2, 5:] = True
    mask = causal_mask(6)
    xs = x if batch_first else x.transpose(1, 0, 2)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(xs), src_mask=torch.from_numpy(mask),
                          src_key_padding_mask=torch.from_numpy(pad)).numpy()
    got = ours(Tensor(xs), src_mask=mask, src_key_padding_mask=pad).data
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.torch
@pytest.mark.parametrize('norm_first', [False, True])
@pytest.mark.parametrize('batch_first', [True, False])
def test_decoder_layer_matches_torch(norm_first, batch_first):
    torch = torch_or_skip()
    torch.manual_seed(1)
    theirs = torch.nn.TransformerDecoderLayer(16, 4, 32, dropout=0.1, batch_first=batch_first,
                                              norm_first=norm_first).eval()
    ours = TransformerDecoderLayer(16, 4, 32, dropout=0.1, batch_first=batch_first, norm_first=norm_first).eval()
    load_from_torch(ours, theirs)
    tgt, mem = randn(3, 5, 16).astype(np.float32), randn(3, 7, 16).astype(np.float32)
    mem_pad = np.zeros((3, 7), bool)
    mem_pad[1, 5:] = True
    tgt_pad = np.zeros((3, 5), bool)
    tgt_pad[2, 4:] = True
    mask = causal_mask(5)
    t = (lambda a: a) if batch_first else (lambda a: a.transpose(1, 0, 2))
    with torch.no_grad():
        expected = theirs(torch.from_numpy(t(tgt)), torch.from_numpy(t(mem)), tgt_mask=torch.from_numpy(mask),
                          tgt_key_padding_mask=torch.from_numpy(tgt_pad),
                          memory_key_padding_mask=torch.from_numpy(mem_pad)).numpy()
    got = ours(Tensor(t(tgt)), Tensor(t(mem)), tgt_mask=mask, tgt_key_padding_mask=tgt_pad,
               memory_key_padding_mask=mem_pad).data
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.torch
@pytest.mark.filterwarnings('ignore::UserWarning')      # torch's notes about its nested-tensor fast path
@pytest.mark.parametrize('batch_first', [True, False])
def test_transformer_matches_torch_guide_config(batch_first):
    torch = torch_or_skip()
    torch.manual_seed(2)
    c = TransformerConfig()
    theirs = torch.nn.Transformer(c.d_model, c.nhead, c.num_encoder_layers, c.num_decoder_layers,
                                  c.dim_feedforward, c.dropout, batch_first=batch_first).eval()
    assert sum(p.numel() for p in theirs.parameters()) == 1_389_056
    ours = Transformer(c.d_model, c.nhead, c.num_encoder_layers, c.num_decoder_layers, c.dim_feedforward,
                       c.dropout, batch_first=batch_first).eval()
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    assert all(ours.state_dict()[k].shape == tuple(v.shape) for k, v in theirs.state_dict().items())
    load_from_torch(ours, theirs)
    src, tgt = randn(4, 10, 128).astype(np.float32), randn(4, 11, 128).astype(np.float32)
    src_pad = np.zeros((4, 10), bool)
    src_pad[1, 7:] = src_pad[3, 9:] = True
    t = (lambda a: a) if batch_first else (lambda a: a.transpose(1, 0, 2))
    tgt_mask = theirs.generate_square_subsequent_mask(11)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(t(src)), torch.from_numpy(t(tgt)), tgt_mask=tgt_mask,
                          src_key_padding_mask=torch.from_numpy(src_pad),
                          memory_key_padding_mask=torch.from_numpy(src_pad)).numpy()
    got = ours(Tensor(t(src)), Tensor(t(tgt)), tgt_mask=Transformer.generate_square_subsequent_mask(11),
               src_key_padding_mask=src_pad, memory_key_padding_mask=src_pad).data
    np.testing.assert_allclose(got, expected, atol=5e-5, rtol=1e-4)
    float_mask = tgt_mask.numpy()           # PyTorch's own float mask (-inf above the diagonal) works too
    got = ours(Tensor(t(src)), Tensor(t(tgt)), tgt_mask=float_mask, src_key_padding_mask=src_pad,
               memory_key_padding_mask=src_pad).data
    np.testing.assert_allclose(got, expected, atol=5e-5, rtol=1e-4)


@pytest.mark.torch
def test_transformer_gradients_match_torch():
    torch = torch_or_skip()
    torch.manual_seed(3)
    theirs = torch.nn.Transformer(32, 4, 2, 2, 64, dropout=0.0, batch_first=True)
    ours = Transformer(32, 4, 2, 2, 64, dropout=0.0, batch_first=True)
    load_from_torch(ours, theirs)
    src, tgt, g = randn(3, 6, 32).astype(np.float32), randn(3, 5, 32).astype(np.float32), randn(3, 5, 32)
    mask = causal_mask(5)
    (theirs(torch.from_numpy(src), torch.from_numpy(tgt), tgt_mask=torch.from_numpy(mask)) *
     torch.from_numpy(g.astype(np.float32))).sum().backward()
    ours(Tensor(src), Tensor(tgt), tgt_mask=mask).backward(g.astype(np.float32))
    grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, grads[name].grad.numpy(), atol=2e-4, rtol=2e-3, err_msg=name)


@pytest.mark.torch
def test_torch_state_dict_loads_into_seq2seq_transformer_part():
    torch = torch_or_skip()
    c = TransformerConfig()
    theirs = torch.nn.Transformer(c.d_model, c.nhead, 3, 3, c.dim_feedforward, batch_first=True)
    model = Seq2SeqTransformer(c)
    load_from_torch(model.transformer, theirs)
    np.testing.assert_array_equal(model.transformer.encoder.layers[2].linear2.weight.data,
                                  theirs.encoder.layers[2].linear2.weight.detach().numpy())
