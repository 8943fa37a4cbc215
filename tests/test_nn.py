"""tinytorch.nn as a library: gradients, module mechanics, error messages, and PyTorch where it is installed."""
import copy

import numpy as np
import pytest
from conftest import load_from_torch, torch_or_skip
from hypothesis import assume, given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from tinytorch.nn import (GELU, CrossEntropyLoss, Dropout, LayerNorm, Linear, Module, ModuleList, Parameter, ReLU,
                          Sequential, cross_entropy, default_generator, dropout, layer_norm, linear, manual_seed,
                          xavier_uniform_)
from tinytorch.tensor import Tensor, gradcheck, no_grad

RNG = np.random.default_rng(0)


def randn(*shape):
    return RNG.standard_normal(shape)


# ---------------------------------------------------------------- gradients (float64 central differences)

@pytest.mark.parametrize('x_shape', [(4,), (3, 4), (2, 3, 4)])
@pytest.mark.parametrize('with_bias', [True, False])
def test_linear_gradcheck(x_shape, with_bias):
    W, b = randn(5, 4), randn(5)
    if with_bias:
        gradcheck(lambda x, w, c: linear(x, w, c), randn(*x_shape), W, b)
    else:
        gradcheck(lambda x, w: linear(x, w), randn(*x_shape), W)


@pytest.mark.parametrize('normalized_shape', [6, (3, 6)])
def test_layer_norm_gradcheck(normalized_shape):
    x = randn(2, 3, 6) * 3 + 1
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    gradcheck(lambda a, w, c: layer_norm(a, normalized_shape, w, c), x, randn(*shape), randn(*shape))
    gradcheck(lambda a: layer_norm(a, normalized_shape), x)
    gradcheck(lambda a, w: layer_norm(a, normalized_shape, w), x, randn(*shape))


@pytest.mark.parametrize('approximate', ['none', 'tanh'])
def test_gelu_module_gradcheck(approximate):
    gradcheck(lambda a: GELU(approximate)(a), randn(3, 5) * 2)


@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
@pytest.mark.parametrize('label_smoothing', [0.0, 0.1, 1.0])
def test_cross_entropy_gradcheck(reduction, label_smoothing):
    z = randn(6, 5)
    t = np.array([0, 4, -100, 2, 2, -100])
    gradcheck(lambda a: cross_entropy(a, t, reduction=reduction, label_smoothing=label_smoothing), z)
    t0 = np.array([0, 4, 0, 2, 1, 0])      # 0 as padding, as in the course's configuration
    gradcheck(lambda a: cross_entropy(a, t0, ignore_index=0, reduction=reduction,
                                      label_smoothing=label_smoothing), z)


def test_cross_entropy_gradcheck_other_shapes():
    gradcheck(lambda a: cross_entropy(a, np.array(2)), randn(5))                          # (C,), scalar target
    gradcheck(lambda a: cross_entropy(a, np.array([[1, 0, 2], [2, 2, -100]]), label_smoothing=0.1),
              randn(2, 3, 3))                                                           # (N, C, d)


def test_dropout_gradcheck_with_a_fixed_mask():
    gradcheck(lambda a: dropout(a, 0.4, generator=np.random.default_rng(3)), randn(5, 7))


def test_sequential_backward_reaches_every_parameter():
    manual_seed(0)
    model = Sequential(Linear(4, 8), GELU(), LayerNorm(8), Dropout(0.2), Linear(8, 3))
    loss = cross_entropy(model(Tensor(randn(10, 4))), np.arange(10) % 3)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape and p.grad.dtype == np.float32, name


# ---------------------------------------------------------------- values and dtypes

def test_everything_stays_float32():
    manual_seed(0)
    x = Tensor(randn(2, 3, 8))
    for layer in (Linear(8, 4), LayerNorm(8), Dropout(0.1), GELU(), ReLU()):
        assert layer(x).dtype == np.float32, layer
    assert cross_entropy(Linear(8, 4)(x).reshape(-1, 4), np.zeros(6, dtype=np.int64)).dtype == np.float32
    assert cross_entropy(x.reshape(-1, 8), np.zeros(6, int), label_smoothing=np.float64(0.1)).dtype == np.float32


def test_layer_norm_matches_definition():
    x = randn(4, 10) * 7 + 3
    w, b = randn(10), randn(10)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b
    got = layer_norm(Tensor(x, dtype=np.float64), 10, Tensor(w, dtype=np.float64), Tensor(b, dtype=np.float64))
    np.testing.assert_allclose(got.data, ref, atol=1e-12)
    ln = LayerNorm(10, elementwise_affine=False)
    assert list(ln.state_dict()) == [] and ln.weight is None
    assert list(LayerNorm(10, bias=False).state_dict()) == ['weight']


def test_cross_entropy_values():
    z = randn(4, 6)
    t = np.array([1, 5, 0, 2])
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    nll = -logp[np.arange(4), t]
    np.testing.assert_allclose(cross_entropy(Tensor(z), t, reduction='none').data, nll, rtol=1e-5)
    smooth = 0.7 * nll - 0.3 * logp.mean(1)
    np.testing.assert_allclose(cross_entropy(Tensor(z), t, label_smoothing=0.3).item(), smooth.mean(), rtol=1e-5)
    # mean over the positions that are not ignored
    t_pad = np.array([1, -100, 0, -100])
    np.testing.assert_allclose(cross_entropy(Tensor(z), t_pad).item(), (nll[0] + nll[2]) / 2, rtol=1e-5)
    assert np.isnan(cross_entropy(Tensor(z), np.full(4, -100)).item())       # as PyTorch: 0 / 0
    assert cross_entropy(Tensor(z), np.full(4, -100), reduction='sum').item() == 0
    loss = CrossEntropyLoss(ignore_index=0, label_smoothing=0.1)
    assert repr(loss) == "CrossEntropyLoss(ignore_index=0, reduction='mean', label_smoothing=0.1)"
    np.testing.assert_allclose(loss(Tensor(z), t).item(),
                               cross_entropy(Tensor(z), t, ignore_index=0, label_smoothing=0.1).item())


def test_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[3e4, -3e4, 0.0], [1e38, 1e38, -1e38]], dtype=np.float32)
    loss = cross_entropy(Tensor(z, requires_grad=True), np.array([1, 0]), reduction='none')
    assert np.isfinite(loss.data).all()
    np.testing.assert_allclose(loss.data, [6e4, np.log(2)], rtol=1e-5)
    z_t = Tensor(z, requires_grad=True)
    cross_entropy(z_t, np.array([1, 0])).backward()
    assert np.isfinite(z_t.grad).all()


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(2, 8)),
              elements=st.floats(-50, 50, allow_nan=False)), st.data())
def test_cross_entropy_properties(z, data):
    n, c = z.shape
    t = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    loss = cross_entropy(Tensor(z, dtype=np.float64), t, reduction='none').data
    assert (loss >= -1e-12).all()                                    # -log of a probability
    shifted = cross_entropy(Tensor(z + 17.0, dtype=np.float64), t, reduction='none').data
    np.testing.assert_allclose(loss, shifted, atol=1e-9)             # invariant to a shift of the logits
    zt = Tensor(z, requires_grad=True, dtype=np.float64)
    cross_entropy(zt, t, reduction='sum').backward()
    np.testing.assert_allclose(zt.grad.sum(axis=1), 0, atol=1e-9)    # softmax - onehot sums to zero per row


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(2, 16)),
              elements=st.floats(-1e3, 1e3, allow_nan=False)))
def test_layer_norm_properties(x):
    assume((x.std(axis=1) > 1e-2).all())            # rows that are not (nearly) constant
    y = layer_norm(Tensor(x, dtype=np.float64), x.shape[1], eps=1e-12).data
    np.testing.assert_allclose(y.mean(axis=1), 0, atol=1e-8)
    np.testing.assert_allclose((y * y).mean(axis=1), 1, atol=1e-4)


# ---------------------------------------------------------------- dropout

def test_dropout_statistics_and_modes():
    manual_seed(0)
    x = Tensor(np.ones((400, 500)))
    y = dropout(x, 0.1).data
    assert abs((y == 0).mean() - 0.1) < 0.005
    assert abs(y.mean() - 1.0) < 0.01
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.9], rtol=1e-6)
    layer = Dropout(0.1)
    assert layer(x) is not x
    assert layer.eval()(x) is x                    # identity in eval mode, no copy
    assert dropout(x, 0.0) is x
    assert repr(layer) == 'Dropout(p=0.1)'


def test_dropout_is_reproducible():
    x = Tensor(np.ones((30, 40)))
    manual_seed(11)
    a = Dropout(0.5)(x).data
    manual_seed(11)
    b = Dropout(0.5)(x).data
    np.testing.assert_array_equal(a, b)
    g = manual_seed(4)
    assert default_generator() is g
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(dropout(x, 0.3, generator=g1).data, dropout(x, 0.3, generator=g2).data)


@pytest.mark.parametrize('p', [1.0, 1.5, -0.1, True, 'a'])
def test_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\), got"):
        Dropout(p)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        dropout(Tensor(np.ones(3)), p)


# ---------------------------------------------------------------- Module mechanics

class Block(Module):
    def __init__(self):
        super().__init__()
        self.linear1 = Linear(4, 8)
        self.norm1 = LayerNorm(8)
        self.dropout1 = Dropout(0.1)
        self.register_buffer('scale', np.full(8, 2.0, dtype=np.float32))
        self.register_buffer('cache', np.zeros(3), persistent=False)

    def forward(self, x):
        return self.dropout1(self.norm1(self.linear1(x))) * self.scale


def test_registration_and_names():
    block = Block()
    assert [n for n, _ in block.named_parameters()] == ['linear1.weight', 'linear1.bias', 'norm1.weight', 'norm1.bias']
    assert list(block.state_dict()) == ['scale', 'linear1.weight', 'linear1.bias', 'norm1.weight', 'norm1.bias']
    assert [n for n, _ in block.named_children()] == ['linear1', 'norm1', 'dropout1']
    assert [n for n, _ in block.named_modules()] == ['', 'linear1', 'norm1', 'dropout1']
    assert len(list(block.children())) == 3
    block.linear1 = Linear(4, 8, bias=False)       # re-assignment replaces
    assert [n for n, _ in block.named_parameters()] == ['linear1.weight', 'norm1.weight', 'norm1.bias']
    del block.norm1
    assert not hasattr(block, 'norm1')
    block.note = 'plain attributes are not registered'
    assert 'note' not in block._modules and block.note.startswith('plain')


def test_registration_errors():
    class Early(Module):
        def __init__(self):
            self.w = Parameter(np.ones(2))
            super().__init__()
    with pytest.raises(AttributeError, match=r"call super\(\).__init__\(\) first"):
        Early()
    layer = Linear(2, 2)
    with pytest.raises(TypeError, match="cannot assign a ndarray to parameter 'weight'"):
        layer.weight = np.ones((2, 2))
    with pytest.raises(KeyError, match="without '.'"):
        layer.register_parameter('a.b', None)
    with pytest.raises(AttributeError, match="'Linear' object has no attribute 'wieght'"):
        layer.wieght
    layer.bias = None
    assert list(layer.state_dict()) == ['weight']
    with pytest.raises(NotImplementedError, match='does not define forward'):
        Module()(1)


def test_shared_parameters_are_yielded_once():
    a, b = Linear(3, 3), Linear(3, 3)
    b.weight = a.weight
    model = Sequential(a, b)
    assert len(list(model.parameters())) == 3
    assert list(model.state_dict()) == ['0.weight', '0.bias', '1.weight', '1.bias']   # as PyTorch: both keys


def test_train_eval_zero_grad_freeze():
    manual_seed(0)
    model = Sequential(Linear(4, 4), Dropout(0.5), Sequential(Linear(4, 2)))
    assert model.eval() is model and not any(m.training for m in model.modules())
    assert model.train() is model and all(m.training for m in model.modules())
    model(Tensor(randn(3, 4))).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    model.requires_grad_(False)
    out = model(Tensor(randn(3, 4)))
    assert not out.requires_grad
    model[2].requires_grad_(True)                  # fine-tune only the head
    model(Tensor(randn(3, 4))).sum().backward()
    assert model[0].weight.grad is None and model[2][0].weight.grad is not None


def test_state_dict_round_trip_and_copies():
    manual_seed(1)
    a, b = Block(), Block()
    sd = a.state_dict()
    sd['linear1.weight'][:] = 0                    # a copy: the model is untouched
    assert np.abs(a.linear1.weight.data).max() > 0
    weight_before = b.linear1.weight
    b.load_state_dict(a.state_dict())
    assert b.linear1.weight is weight_before        # loaded in place
    x = Tensor(randn(2, 4))
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x).data, b(x).data)


def test_load_state_dict_errors_name_the_key():
    block = Block()
    sd = block.state_dict()
    with pytest.raises(RuntimeError, match="load_state_dict: missing key 'linear1.bias'"):
        block.load_state_dict({k: v for k, v in sd.items() if k != 'linear1.bias'})
    with pytest.raises(RuntimeError, match="unexpected key 'linear2.weight'"):
        block.load_state_dict({**sd, 'linear2.weight': np.ones(2)})
    bad = {**sd, 'linear1.weight': np.ones((4, 8))}
    with pytest.raises(RuntimeError, match=r"'linear1.weight' has shape \(4, 8\) in the state dict, "
                                           r"but the module's has shape \(8, 4\)"):
        block.load_state_dict(bad)
    with pytest.raises(RuntimeError, match="has shape"):   # shapes are checked even when not strict
        block.load_state_dict(bad, strict=False)
    before = block.state_dict()
    with pytest.raises(RuntimeError):
        block.load_state_dict({**sd, 'linear1.bias': np.zeros(8), 'norm1.bias': np.ones(3)})
    np.testing.assert_array_equal(block.linear1.bias.data, before['linear1.bias'])   # nothing copied
    result = block.load_state_dict({'linear1.weight': sd['linear1.weight'], 'extra': np.ones(1)}, strict=False)
    assert result.missing_keys == ['scale', 'linear1.bias', 'norm1.weight', 'norm1.bias']
    assert result.unexpected_keys == ['extra']


def test_load_state_dict_casts_to_float32():
    layer = Linear(2, 3)
    layer.load_state_dict({'weight': np.arange(6, dtype=np.float64).reshape(3, 2), 'bias': [1, 2, 3]})
    assert layer.weight.dtype == np.float32 and layer.bias.data.tolist() == [1.0, 2.0, 3.0]


def test_state_dict_saves_to_npz(tmp_path):
    manual_seed(2)
    model = Sequential(Linear(3, 5), LayerNorm(5))
    np.savez(tmp_path / 'ckpt.npz', **model.state_dict())
    other = Sequential(Linear(3, 5), LayerNorm(5))
    with np.load(tmp_path / 'ckpt.npz') as f:
        other.load_state_dict(dict(f))
    for (k, v), (k2, v2) in zip(model.state_dict().items(), other.state_dict().items()):
        assert k == k2 and np.array_equal(v, v2)


def test_containers_and_repr():
    seq = Sequential(Linear(4, 8), ReLU(), GELU('tanh'))
    assert len(seq) == 3 and isinstance(seq[0], Linear) and isinstance(seq[-1], GELU)
    assert [type(m).__name__ for m in seq[1:]] == ['ReLU', 'GELU']
    assert repr(seq) == ("Sequential(\n  (0): Linear(in_features=4, out_features=8, bias=True)\n  (1): ReLU()\n"
                         "  (2): GELU(approximate='tanh')\n)")
    assert repr(LayerNorm(8)) == 'LayerNorm((8,), eps=1e-05, elementwise_affine=True)'
    named = Sequential({'linear1': Linear(2, 3), 'act': ReLU()})
    assert list(named.state_dict()) == ['linear1.weight', 'linear1.bias']
    layers = ModuleList([Linear(2, 2) for _ in range(3)])
    assert len(layers) == 3 and list(layers.state_dict())[-1] == '2.bias'
    layers.append(Linear(2, 2))
    assert len(list(layers.parameters())) == 8
    with pytest.raises(TypeError, match='holds Modules'):
        layers.append(np.ones(2))
    nested = Sequential(Sequential(Linear(1, 1)))
    assert '(0): Sequential(\n    (0): Linear' in repr(nested)
    assert repr(Parameter([1.0])).startswith('Parameter containing:')


def test_deepcopy_and_apply():
    manual_seed(0)
    block = Block()
    clone = copy.deepcopy(block)
    assert clone.linear1.weight is not block.linear1.weight
    np.testing.assert_array_equal(clone.linear1.weight.data, block.linear1.weight.data)
    clone.linear1.weight.data += 1
    assert not np.array_equal(clone.linear1.weight.data, block.linear1.weight.data)
    seen = []
    block.apply(lambda m: seen.append(type(m).__name__))
    assert seen == ['Linear', 'LayerNorm', 'Dropout', 'Block']


def test_init():
    manual_seed(0)
    layer = Linear(256, 64)
    assert np.abs(layer.weight.data).max() <= 1 / 16 and np.abs(layer.bias.data).max() <= 1 / 16
    assert abs(layer.weight.data.std() - (1 / 16) / np.sqrt(3)) < 2e-3        # U(-k, k) has std k / sqrt(3)
    w = Parameter(np.zeros((30, 20)))
    xavier_uniform_(w, generator=np.random.default_rng(0))
    assert np.abs(w.data).max() <= np.sqrt(6 / 50)


def test_linear_errors():
    layer = Linear(128, 10)
    with pytest.raises(ValueError, match=r"Linear\(in_features=128\): input has 64 features in its last dimension "
                                         r"\(shape \(2, 64\)\), expected 128"):
        layer(Tensor(np.ones((2, 64))))
    with pytest.raises(ValueError, match='in_features must be a positive integer, got 0'):
        Linear(0, 3)
    with pytest.raises(ValueError, match='out_features must be a positive integer'):
        Linear(3, 2.5)
    with pytest.raises(ValueError, match='linear: input has 3 features'):
        linear(Tensor(np.ones((2, 3))), Tensor(np.ones((4, 5))))


def test_layer_norm_errors():
    with pytest.raises(ValueError, match=r"does not end with normalized_shape \(128,\)"):
        LayerNorm(128)(Tensor(np.ones((2, 64))))
    with pytest.raises(ValueError, match='normalized_shape must be a positive integer'):
        LayerNorm(0)


def test_cross_entropy_errors():
    z = Tensor(np.zeros((3, 20)))
    with pytest.raises(IndexError, match='cross_entropy: target 25 is out of range for 20 classes'):
        cross_entropy(z, np.array([1, 25, 2]))
    with pytest.raises(IndexError, match='target -1 is out of range'):
        cross_entropy(z, np.array([1, -1, 2]))
    cross_entropy(z, np.array([1, -1, 2]), ignore_index=-1)           # fine: -1 marks padding here
    with pytest.raises(ValueError, match=r'target has shape \(2,\), expected \(3,\)'):
        cross_entropy(z, np.array([1, 2]))
    with pytest.raises(TypeError, match='integer class indices'):
        cross_entropy(z, np.array([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\], got 1.5"):
        cross_entropy(z, np.array([1, 2, 0]), label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none', got 'avg'"):
        cross_entropy(z, np.array([1, 2, 0]), reduction='avg')


# ---------------------------------------------------------------- against PyTorch

@pytest.mark.torch
@pytest.mark.parametrize('shape', [(7, 16), (2, 5, 16)])
def test_linear_matches_torch(shape):
    torch = torch_or_skip()
    tlin = torch.nn.Linear(16, 12)
    ours = Linear(16, 12)
    ours.load_state_dict({k: v.detach().numpy() for k, v in tlin.state_dict().items()})
    x = randn(*shape).astype(np.float32)
    g = randn(*shape[:-1], 12).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = tlin(xt)
    yt.backward(torch.tensor(g))
    xo = Tensor(x, requires_grad=True)
    yo = ours(xo)
    yo.backward(g)
    np.testing.assert_allclose(yo.data, yt.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(xo.grad, xt.grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours.weight.grad, tlin.weight.grad.numpy(), atol=1e-4)
    np.testing.assert_allclose(ours.bias.grad, tlin.bias.grad.numpy(), atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize('normalized_shape', [32, (4, 32)])
def test_layer_norm_matches_torch(normalized_shape):
    torch = torch_or_skip()
    tln = torch.nn.LayerNorm(normalized_shape)
    with torch.no_grad():
        tln.weight.normal_()
        tln.bias.normal_()
    ours = LayerNorm(normalized_shape)
    ours.load_state_dict({k: v.numpy() for k, v in tln.state_dict().items()})
    x = (randn(3, 4, 32) * 4 + 2).astype(np.float32)
    g = randn(3, 4, 32).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = tln(xt)
    yt.backward(torch.tensor(g))
    xo = Tensor(x, requires_grad=True)
    yo = ours(xo)
    yo.backward(g)
    np.testing.assert_allclose(yo.data, yt.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(xo.grad, xt.grad.numpy(), atol=1e-4)
    np.testing.assert_allclose(ours.weight.grad, tln.weight.grad.numpy(), atol=1e-4)
    np.testing.assert_allclose(ours.bias.grad, tln.bias.grad.numpy(), atol=1e-4)


@pytest.mark.torch
@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
@pytest.mark.parametrize('label_smoothing', [0.0, 0.1])
@pytest.mark.parametrize('ignore_index', [-100, 0])
def test_cross_entropy_matches_torch(reduction, label_smoothing, ignore_index):
    torch = torch_or_skip()
    z = (randn(12, 20) * 3).astype(np.float32)
    t = RNG.integers(0, 20, 12)
    t[[2, 5]] = ignore_index if ignore_index >= 0 else -100
    zt = torch.tensor(z, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(t), ignore_index=ignore_index,
                                           label_smoothing=label_smoothing, reduction=reduction)
    g = randn(*lt.shape).astype(np.float32)
    lt.backward(torch.tensor(g))
    zo = Tensor(z, requires_grad=True)
    lo = cross_entropy(zo, t, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction)
    lo.backward(g)
    np.testing.assert_allclose(lo.data, lt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(zo.grad, zt.grad.numpy(), atol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize('classes', [1, 32, 33, 500])     # both sides of _row_max's transposed-copy threshold
def test_cross_entropy_matches_torch_for_any_number_of_classes(classes):
    torch = torch_or_skip()
    z = (randn(40, classes) * 5).astype(np.float32)
    z[3] += 1e4                                          # a row far above the others
    t = RNG.integers(0, classes, 40)
    zt = torch.tensor(z, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(t), label_smoothing=0.1)
    lt.backward()
    zo = Tensor(z, requires_grad=True)
    lo = cross_entropy(zo, t, label_smoothing=0.1)
    lo.backward()
    np.testing.assert_allclose(lo.item(), lt.item(), rtol=1e-5)
    np.testing.assert_allclose(zo.grad, zt.grad.numpy(), atol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize('affine', ['none', 'weight', 'bias'])
def test_layer_norm_float32_matches_float64_torch_at_model_size(affine):
    torch = torch_or_skip()
    x = randn(640, 128) * 3 + 1
    g = randn(640, 128)
    w = randn(128) if affine == 'weight' else None
    b = randn(128) if affine == 'bias' else None
    xt = torch.tensor(x, requires_grad=True)
    wt = None if w is None else torch.tensor(w, requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    yt = torch.nn.functional.layer_norm(xt, (128,), wt, bt)
    yt.backward(torch.tensor(g))
    f32 = lambda a: None if a is None else Tensor(a.astype(np.float32), requires_grad=True)
    xo, wo, bo = f32(x), f32(w), f32(b)
    yo = layer_norm(xo, 128, wo, bo)
    yo.backward(g.astype(np.float32))
    assert yo.dtype == np.float32 and xo.grad.dtype == np.float32
    np.testing.assert_allclose(yo.data, yt.detach().numpy(), atol=2e-5)
    np.testing.assert_allclose(xo.grad, xt.grad.numpy(), atol=2e-5)
    for ours, theirs in ((wo, wt), (bo, bt)):
        if ours is not None:
            np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-5, atol=2e-4)


@pytest.mark.parametrize('label_smoothing', [0.0, 0.1])
def test_cross_entropy_backward_leaves_its_saved_exponentials_alone(label_smoothing):
    "The backward reads the forward's e^(z - m) and must not scale it in place: a retained graph runs it again."
    z = Tensor(randn(6, 5).astype(np.float32), requires_grad=True)
    loss = cross_entropy(z, np.array([0, 1, 4, 2, 3, 0]), label_smoothing=label_smoothing)
    loss.backward(retain_graph=True)
    first = z.grad.copy()
    z.grad = None
    loss.backward()
    np.testing.assert_array_equal(z.grad, first)


def test_layer_norm_backward_leaves_its_inputs_and_saved_state_alone():
    x, g = randn(5, 8).astype(np.float32), randn(5, 8).astype(np.float32)
    g_copy = g.copy()
    xt = Tensor(x, requires_grad=True)
    ln = LayerNorm(8)
    ln.weight.data[...] = randn(8)
    y = ln(xt)
    y.backward(g, retain_graph=True)                   # as in PyTorch, a second pass needs the graph kept
    first = xt.grad.copy(), ln.weight.grad.copy()
    xt.grad = ln.weight.grad = None
    y.backward(g)                                      # a second pass through the same graph gives the same
    np.testing.assert_array_equal(xt.grad, first[0])
    np.testing.assert_array_equal(ln.weight.grad, first[1])
    np.testing.assert_array_equal(g, g_copy)            # the incoming gradient is not modified in place


@pytest.mark.torch
def test_cross_entropy_shapes_match_torch():
    torch = torch_or_skip()
    z = randn(2, 5, 3).astype(np.float32)               # (N, C, d): class axis second
    t = np.array([[0, 4, 1], [2, 2, -100]])
    for reduction in ('mean', 'none'):
        ref = torch.nn.functional.cross_entropy(torch.tensor(z), torch.tensor(t), reduction=reduction)
        np.testing.assert_allclose(cross_entropy(Tensor(z), t, reduction=reduction).data, ref.numpy(), atol=1e-6)
    z1 = randn(5).astype(np.float32)
    ref = torch.nn.functional.cross_entropy(torch.tensor(z1), torch.tensor(3), label_smoothing=0.2)
    np.testing.assert_allclose(cross_entropy(Tensor(z1), np.array(3), label_smoothing=0.2).item(), ref.item(), rtol=1e-6)
    all_ignored = torch.nn.functional.cross_entropy(torch.zeros(2, 3), torch.tensor([-100, -100]))
    assert np.isnan(all_ignored.item()) and np.isnan(cross_entropy(Tensor(np.zeros((2, 3))), np.array([-100, -100])).item())


@pytest.mark.torch
def test_gelu_matches_torch():
    torch = torch_or_skip()
    x = (randn(50) * 3).astype(np.float32)
    for approximate in ('none', 'tanh'):
        ref = torch.nn.GELU(approximate)(torch.tensor(x)).numpy()
        np.testing.assert_allclose(GELU(approximate)(Tensor(x)).data, ref, atol=1e-6)


def _torch_block(torch):
    class TorchBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear1 = torch.nn.Linear(6, 10)
            self.norm1 = torch.nn.LayerNorm(10)
            self.layers = torch.nn.ModuleList([torch.nn.Linear(10, 10), torch.nn.Linear(10, 10, bias=False)])
            self.head = torch.nn.Sequential(torch.nn.GELU(), torch.nn.Dropout(0.1), torch.nn.Linear(10, 3))

        def forward(self, x):
            x = self.norm1(self.linear1(x))
            for layer in self.layers:
                x = torch.relu(layer(x))
            return self.head(x)
    return TorchBlock()


class OurBlock(Module):
    def __init__(self):
        super().__init__()
        self.linear1 = Linear(6, 10)
        self.norm1 = LayerNorm(10)
        self.layers = ModuleList([Linear(10, 10), Linear(10, 10, bias=False)])
        self.head = Sequential(GELU(), Dropout(0.1), Linear(10, 3))

    def forward(self, x):
        x = self.norm1(self.linear1(x))
        for layer in self.layers:
            x = ReLU()(layer(x))
        return self.head(x)


@pytest.mark.torch
def test_state_dicts_move_between_torch_and_us():
    torch = torch_or_skip()
    torch.manual_seed(0)
    theirs = _torch_block(torch).eval()
    with torch.no_grad():
        theirs.norm1.weight.normal_()
        theirs.norm1.bias.normal_()
    ours = OurBlock().eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})      # torch -> numpy -> ours
    ours.load_state_dict(theirs.state_dict())                                           # CPU torch tensors directly
    x = randn(4, 6).astype(np.float32)
    with no_grad():
        mine = ours(Tensor(x)).data
    with torch.no_grad():
        ref = theirs(torch.tensor(x)).numpy()
    np.testing.assert_allclose(mine, ref, atol=1e-5)
    # ours -> torch
    manual_seed(3)
    fresh = OurBlock().eval()
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in fresh.state_dict().items()})
    with torch.no_grad():
        ref = theirs(torch.tensor(x)).numpy()
    with no_grad():
        np.testing.assert_allclose(fresh(Tensor(x)).data, ref, atol=1e-5)
    # a torch state dict with a mis-shaped entry is refused, naming the key
    bad = {k: v.numpy() for k, v in theirs.state_dict().items()}
    bad['layers.1.weight'] = bad['layers.1.weight'][:, :5]
    with pytest.raises(RuntimeError, match=r"'layers.1.weight' has shape \(10, 5\)"):
        ours.load_state_dict(bad)


@pytest.mark.torch
def test_linear_init_distribution_matches_torch():
    torch = torch_or_skip()
    torch.manual_seed(0)
    manual_seed(0)
    tw = torch.nn.Linear(400, 300).weight.detach().numpy()
    ow = Linear(400, 300).weight.data
    assert abs(tw.max() - ow.max()) < 1e-3 and abs(tw.min() - ow.min()) < 1e-3
    assert abs(tw.std() - ow.std()) < 1e-3
