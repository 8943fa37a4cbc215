"""tinytorch.tensor as a library: gradients of every operation (with broadcasting), dtype rules, errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import tinytorch.tensor as T
from tinytorch import Tensor, concatenate, gelu, gradcheck, log_softmax, no_grad, relu, softmax, stack, where

rng = np.random.default_rng(0)
R = lambda *shape: rng.standard_normal(shape)           # noqa: E731
P = lambda *shape: rng.uniform(0.5, 2.0, shape)          # positive, away from 0  # noqa: E731
AWAY0 = lambda *shape: np.sign(R(*shape)) * P(*shape)    # away from ReLU's kink  # noqa: E731

# name -> (function of tensors, inputs, the Function classes whose backward it exercises)
CASES = {
    'add broadcast': (lambda a, b: a + b, [R(2, 3, 4), R(3, 1)], ['Add']),
    'add scalar': (lambda a: 2.0 + a, [R(3)], ['Add']),
    'sub broadcast': (lambda a, b: a - b, [R(3, 4), R(4)], ['Sub']),
    'rsub scalar': (lambda a: 1.0 - a, [R(2, 2)], ['Sub']),
    'mul broadcast': (lambda a, b: a * b, [R(2, 1, 4), R(3, 1)], ['Mul']),
    'div broadcast': (lambda a, b: a / b, [R(2, 3), P(1, 3)], ['Div']),
    'rdiv scalar': (lambda a: 1.0 / a, [P(4)], ['Div']),
    'neg': (lambda a: -a, [R(3, 2)], ['Neg']),
    'pow': (lambda a: a ** 1.5, [P(3, 2)], ['Pow']),
    'pow negative': (lambda a: a ** -2, [P(4)], ['Pow']),
    'matmul 2d': (lambda a, b: a @ b, [R(3, 4), R(4, 2)], ['MatMul']),
    'matmul batch x 2d': (lambda a, b: a @ b, [R(2, 3, 4), R(4, 5)], ['MatMul']),
    'matmul broadcast batch': (lambda a, b: a @ b, [R(2, 1, 3, 4), R(3, 4, 2)], ['MatMul']),
    'matmul vec': (lambda a, b: a @ b, [R(4), R(4, 3)], ['MatMul']),
    'matmul mat vec': (lambda a, b: a @ b, [R(2, 4), R(4)], ['MatMul']),
    'exp': (lambda a: a.exp(), [R(3, 4)], ['Exp']),
    'log': (lambda a: a.log(), [P(3, 4)], ['Log']),
    'sum all': (lambda a: a.sum(), [R(2, 3)], ['Sum']),
    'sum axes keepdims': (lambda a: a.sum(axis=(0, 2), keepdims=True), [R(2, 3, 4)], ['Sum']),
    'sum negative axis': (lambda a: a.sum(axis=-1), [R(2, 3, 4)], ['Sum']),
    'mean axis': (lambda a: a.mean(axis=1), [R(2, 3, 4)], ['Mean']),
    'mean all': (lambda a: a.mean(), [R(5)], ['Mean']),
    'max axis': (lambda a: a.max(axis=1), [R(3, 5)], ['Max']),
    'max keepdims': (lambda a: a.max(axis=0, keepdims=True), [R(3, 5)], ['Max']),
    'reshape': (lambda a: a.reshape(4, 6), [R(2, 3, 4)], ['Reshape']),
    'permute': (lambda a: a.permute(2, 0, 1), [R(2, 3, 4)], ['Permute']),
    'transpose': (lambda a: a.transpose(0, 2), [R(2, 3, 4)], ['Permute']),
    'T': (lambda a: a.T, [R(2, 3)], ['Permute']),
    'getitem slice': (lambda a: a[1:, ::2], [R(4, 5)], ['GetItem']),
    'getitem repeated ids': (lambda a: a[np.array([0, 2, 2, 0])], [R(3, 4)], ['GetItem']),
    'getitem bool': (lambda a: a[a.data > 0], [R(4, 5)], ['GetItem']),
    'concatenate': (lambda a, b: concatenate([a, b], axis=1), [R(2, 3), R(2, 2)], ['Concatenate']),
    'stack': (lambda a, b: stack([a, b], axis=-1), [R(2, 3), R(2, 3)], ['Stack']),
    'where broadcast': (lambda a, b: where(a.data > 0, a, b), [R(3, 4), R(4)], ['Where']),
    'masked_fill': (lambda a: a.masked_fill(np.array([True, False, True, False]), -1.0), [R(3, 4)], ['Where']),
    'softmax': (lambda a: softmax(a), [R(3, 5)], ['Softmax']),
    'softmax axis 0': (lambda a: softmax(a, axis=0), [R(3, 5)], ['Softmax']),
    'log_softmax': (lambda a: log_softmax(a), [R(3, 5) * 4], ['LogSoftmax']),
    'relu': (lambda a: relu(a), [AWAY0(3, 4)], ['ReLU']),
    'gelu': (lambda a: gelu(a), [R(3, 4) * 3], ['GELU']),
    'gelu tanh': (lambda a: gelu(a, approximate='tanh'), [R(3, 4) * 3], ['GELU']),
}


def test_every_exported_function_has_a_case():
    functions = {n for n in T.__all__ if isinstance(getattr(T, n), type) and issubclass(getattr(T, n), T.Function)
                 and getattr(T, n) is not T.Function}
    covered = {f for _, _, fs in CASES.values() for f in fs}
    assert functions <= covered, f'no gradcheck case for {sorted(functions - covered)}'


@pytest.mark.parametrize('name', CASES)
def test_gradcheck(name):
    fn, inputs, _ = CASES[name]
    assert gradcheck(fn, *inputs)


@pytest.mark.parametrize('name', CASES)
def test_gradcheck_catches_a_wrong_backward(name, monkeypatch):
    """Break each operation's backward (gradients 10% too large): gradcheck must notice."""
    fn, inputs, classes = CASES[name]
    for cls_name in classes:
        cls = getattr(T, cls_name)
        original = cls.backward

        def wrong(ctx, grad, original=original):
            grads = original(ctx, grad)
            return tuple(None if g is None else g * 1.1 for g in grads) if isinstance(grads, tuple) else grads * 1.1
        monkeypatch.setattr(cls, 'backward', staticmethod(wrong))
    with pytest.raises(AssertionError, match='gradient mismatch'):
        gradcheck(fn, *inputs)


broadcastable = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3)


@settings(max_examples=25, deadline=None)
@given(shapes=broadcastable, op=st.sampled_from(['add', 'sub', 'mul', 'div']))
def test_gradcheck_any_broadcast(shapes, op):
    a, b = R(*shapes.input_shapes[0]), P(*shapes.input_shapes[1])
    f = {'add': lambda x, y: x + y, 'sub': lambda x, y: x - y, 'mul': lambda x, y: x * y, 'div': lambda x, y: x / y}[op]
    out = f(Tensor(a), Tensor(b))
    assert out.shape == shapes.result_shape
    gradcheck(f, a, b)


@settings(max_examples=25, deadline=None)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
                    elements=st.floats(-1e4, 1e4, width=32)))
def test_softmax_rows_sum_to_one(x):
    p = softmax(Tensor(x)).data
    assert p.dtype == np.float32 and np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.exp(log_softmax(Tensor(x)).data), p, atol=1e-6)


def test_float32_by_default_and_kept():
    t = Tensor([1, 2, 3])
    assert t.dtype == np.float32
    for out in (t * 2.0, t * np.float64(2.0), 1.0 / (t + 1), t @ np.ones(3), softmax(t), gelu(t), t.mean(), t ** 2):
        assert out.dtype == np.float32, out
    assert Tensor([1.0], dtype=np.float64).dtype == np.float64
    assert (Tensor([1.0], dtype=np.float64) * 2.0).dtype == np.float64


def test_backward_accumulates_and_detach_cuts():
    x = Tensor([1.0, 2.0], requires_grad=True)
    (x * x).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, [4.0, 8.0])
    y = x.detach() * 3.0
    assert not y.requires_grad and y.grad_fn is None


def test_shared_gradient_arrays_are_not_aliased():
    a, b = Tensor([1.0], requires_grad=True), Tensor([2.0], requires_grad=True)
    (a + b).backward(np.ones(1))          # Add hands the same array to both inputs
    a.grad *= 10
    assert b.grad[0] == 1.0


def test_leaf_gradients_never_alias_each_other_or_the_callers_array():
    a, b = Tensor([1.0, 2.0], requires_grad=True), Tensor([3.0, 4.0], requires_grad=True)
    (a.reshape(2, 1).reshape(2) + b).backward(np.ones(2))   # a gets a view of the array b gets
    a.grad *= 10
    assert list(b.grad) == [1.0, 1.0]
    w = np.ones(2, dtype=np.float32)
    c = Tensor([1.0, 2.0], requires_grad=True)
    c.backward(w)                                            # the caller's array is not adopted
    c.grad *= 3
    assert list(w) == [1.0, 1.0]
    table = Tensor(np.zeros((5, 3)), requires_grad=True)
    table[np.array([0, 0, 4])].backward(np.ones((3, 3)))
    assert table.grad.base is None and table.grad[0, 0] == 2.0   # a fresh array the pass made: adopted


def test_no_grad_restores_state_even_after_errors():
    x = Tensor([1.0], requires_grad=True)
    with no_grad():
        assert not (x * 2.0).requires_grad
    assert T.is_grad_enabled()
    with pytest.raises(ZeroDivisionError):
        with no_grad():
            raise ZeroDivisionError
    assert T.is_grad_enabled() and (x * 2.0).requires_grad


def test_deep_graph_does_not_recurse():
    x = Tensor([1.0], requires_grad=True)
    h = x
    for _ in range(5000):
        h = h + 1.0
    h.backward(np.ones(1))
    assert x.grad[0] == 1.0


@pytest.mark.parametrize('make, message', [
    (lambda: Tensor('abc'), 'Tensor data must be numbers'),
    (lambda: Tensor([1, 2], dtype=np.int64, requires_grad=True), 'only floating-point tensors'),
    (lambda: Tensor([1.0, 2.0], requires_grad=True).backward(), 'one-element tensor'),
    (lambda: (Tensor([1.0, 2.0], requires_grad=True) * 1.0).backward(np.ones(3)), 'expected the tensor\'s shape (2,)'),
    (lambda: Tensor([1.0]).backward(), 'does not require grad'),
    (lambda: Tensor(np.ones((2, 3))).reshape(4, 2), 'cannot reshape a tensor of shape (2, 3)'),
    (lambda: Tensor(np.ones((2, 3))).permute(0, 0), 'not a permutation'),
    (lambda: Tensor(np.ones((2, 3))).sum(axis=2), 'axis 2 is out of range'),
    (lambda: Tensor([2.0]) ** Tensor([2.0]), 'exponent of ** must be a number'),
    (lambda: Tensor(np.ones((2, 3))).masked_fill(np.ones(3), 0.0), 'must be boolean'),
    (lambda: Tensor(np.ones((2, 3))).masked_fill(np.ones((4, 3), bool), 0.0), 'does not broadcast'),
    (lambda: gelu(Tensor([1.0]), approximate='fast'), "approximate must be 'none' or 'tanh'"),
    (lambda: Tensor(None), 'got None in None'),                        # NumPy would make these NaN, silently
    (lambda: Tensor([[1.0, 2.0], [3.0, None]]), 'got None in [[1.0, 2.0], [3.0, None]]'),
    (lambda: Tensor(np.ones(3)).sum(dim=0), "unexpected keyword argument 'dim'"),   # documented: NumPy's names
])
def test_clear_errors(make, message):
    with pytest.raises((TypeError, ValueError, RuntimeError)) as err:
        make()
    assert message in str(err.value)


def test_erf_matches_math_erf():
    import math
    x = np.linspace(-10, 10, 40001)
    np.testing.assert_allclose(T.erf(x), [math.erf(v) for v in x], rtol=0, atol=2e-16 * 4)
    x32 = x.astype(np.float32)
    assert T.erf(x32).dtype == np.float32
    np.testing.assert_allclose(T.erf(x32), [math.erf(v) for v in x32.astype(np.float64)], atol=6e-7)  # A&S 7.1.26


@pytest.mark.torch
def test_matches_torch():
    torch = pytest.importorskip('torch')
    x = R(4, 7) * 3
    for ours, theirs in [(lambda t: softmax(t), lambda t: torch.softmax(t, -1)),
                         (lambda t: log_softmax(t, axis=0), lambda t: torch.log_softmax(t, 0)),
                         (lambda t: gelu(t), torch.nn.functional.gelu),
                         (lambda t: gelu(t, approximate='tanh'), lambda t: torch.nn.functional.gelu(t, approximate='tanh')),
                         (lambda t: (t @ t.T).max(axis=1), lambda t: (t @ t.T).amax(1))]:
        a = Tensor(x, requires_grad=True, dtype=np.float64)
        b = torch.tensor(x, requires_grad=True)
        ya, yb = ours(a), theirs(b)
        w = R(*ya.shape)
        ya.backward(w)
        yb.backward(torch.tensor(w))
        np.testing.assert_allclose(ya.data, yb.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(a.grad, b.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_nan_and_none_free_data_still_converts():
    assert np.isnan(Tensor([1.0, float('nan')]).data[1]) and np.isnan(Tensor(np.array([np.nan])).data[0])
    assert Tensor([[1, 2], [3, 4]]).dtype == np.float32 and Tensor((1, 2), dtype=np.int64).dtype == np.int64
