"""tinytorch.optim as a library: update rules, schedules, LR finder, early stopping, state dicts, errors,
and PyTorch where it is installed (same start, same steps, same parameters)."""
import math

import matplotlib
import numpy as np
import pytest
from conftest import load_from_torch, torch_or_skip
from hypothesis import given, settings, strategies as st

from tinytorch.nn import GELU, LayerNorm, Linear, Parameter, Sequential, cross_entropy, manual_seed
from tinytorch.optim import (SGD, Adam, AdamW, CosineAnnealingLR, EarlyStopping, LambdaLR, ReduceLROnPlateau,
                             StepLR, clip_grad_norm_, inverse_sqrt_warmup, linear_warmup_decay, lr_find)
from tinytorch.tensor import Tensor

matplotlib.use('Agg')

RNG = np.random.default_rng(0)
DATA = [(RNG.standard_normal((8, 5)).astype(np.float32), RNG.integers(0, 3, 8)) for _ in range(10)]


def make_model(seed=0):
    manual_seed(seed)
    return Sequential(Linear(5, 16), GELU(), LayerNorm(16), Linear(16, 3))


def train(model, optimizer, steps=10, scheduler=None, clip=None):
    for x, y in DATA[:steps]:
        loss = cross_entropy(model(Tensor(x)), y)
        optimizer.zero_grad()
        loss.backward()
        if clip:
            clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return model


def param(values, grad):
    p = Parameter(values)
    p.grad = np.asarray(grad, dtype=np.float32)
    return p


# ---------------------------------------------------------------- update rules

def test_sgd_rules_by_hand():
    g = np.array([0.5, -1.0])
    p = param([1.0, 2.0], g)
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True)
    opt.step()
    d = g + 0.1 * np.array([1.0, 2.0])
    np.testing.assert_allclose(p.data, [1.0, 2.0] - 0.1 * (d + 0.9 * d), rtol=1e-6)
    np.testing.assert_array_equal(p.grad, g.astype(np.float32))          # the gradient is not modified


def test_adam_first_step_is_lr_per_coordinate():
    p = param([0.0, 0.0, 0.0], [1e-3, -1e3, 5.0])
    Adam([p], lr=0.01).step()
    np.testing.assert_allclose(p.data, [-0.01, 0.01, -0.01], rtol=1e-4)


def test_adamw_decays_without_gradient_signal():
    p = Parameter([2.0, -4.0])
    opt = AdamW([p], lr=0.1, weight_decay=0.2)
    for _ in range(5):
        p.grad = np.zeros(2, dtype=np.float32)
        opt.step()
    np.testing.assert_allclose(p.data, np.array([2.0, -4.0]) * 0.98 ** 5, rtol=1e-6)


def test_parameters_without_grad_are_skipped_and_dtypes_kept():
    a, b = param([1.0], [1.0]), Parameter([5.0])
    for opt in (SGD([a, b], lr=0.1, momentum=0.9), Adam([a, b]), AdamW([a, b], amsgrad=True)):
        opt.step()
        assert b.data[0] == 5.0 and b not in opt.state
        assert a.dtype == np.float32 and all(v.dtype == np.float32 for v in opt.state[a].values()
                                              if isinstance(v, np.ndarray))


def test_param_groups_have_their_own_hyperparameters():
    model = make_model()
    decay = [p for n, p in model.named_parameters() if n.endswith('weight') and p.ndim == 2]
    no_decay = [p for n, p in model.named_parameters() if not (n.endswith('weight') and p.ndim == 2)]
    opt = AdamW([{'params': decay, 'weight_decay': 0.1}, {'params': no_decay, 'weight_decay': 0.0, 'lr': 1e-2}],
                lr=1e-3)
    assert [g['weight_decay'] for g in opt.param_groups] == [0.1, 0.0]
    assert [g['lr'] for g in opt.param_groups] == [1e-3, 1e-2]
    assert opt.param_groups[0]['betas'] == (0.9, 0.999)
    sched = StepLR(opt, step_size=2, gamma=0.5)
    train(model, opt, steps=4, scheduler=sched)
    assert sched.get_last_lr() == [2.5e-4, 2.5e-3]
    assert 'weight_decay=0.1' in repr(opt) and repr(opt).startswith('AdamW(')


def test_zero_grad_and_closure():
    p = param([1.0], [3.0])
    opt = SGD([p], lr=0.1)
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(p.grad, [0.0])
    opt.zero_grad()
    assert p.grad is None

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss
    assert opt.step(closure).item() == pytest.approx(1.0)
    assert p.data[0] == pytest.approx(0.8)


@pytest.mark.parametrize('make', [lambda ps: SGD(ps, lr=0.1, momentum=0.9), lambda ps: Adam(ps, lr=0.05),
                                  lambda ps: AdamW(ps, lr=0.05)])
def test_optimizers_train(make):
    model = make_model()
    opt = make(model.parameters())
    x, y = DATA[0]
    first = cross_entropy(model(Tensor(x)), y).item()
    for _ in range(30):
        loss = cross_entropy(model(Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


# ---------------------------------------------------------------- clipping

@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=8),
       st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=8),
       st.floats(0.01, 100), st.sampled_from([1.0, 2.0, 3.0, math.inf]))
def test_clip_grad_norm_properties(g1, g2, max_norm, norm_type):
    a, b = param(np.zeros(len(g1)), g1), param(np.zeros(len(g2)), g2)
    before = np.concatenate([a.grad, b.grad]).astype(np.float64)
    total = clip_grad_norm_([a, b], max_norm, norm_type)
    expected = np.linalg.norm(before, ord=norm_type)
    assert total == pytest.approx(expected, rel=1e-5, abs=1e-6)
    after = np.concatenate([a.grad, b.grad]).astype(np.float64)
    assert np.linalg.norm(after, ord=norm_type) <= max_norm * (1 + 1e-5) or total <= max_norm
    scale = min(1.0, max_norm / (expected + 1e-6))
    np.testing.assert_allclose(after, before * scale, rtol=1e-5, atol=1e-6)   # the direction is kept


def test_clip_grad_norm_edge_cases():
    assert clip_grad_norm_([Parameter([1.0])], 1.0) == 0.0                     # no gradients at all
    p = param([0.0, 0.0], [np.inf, 1.0])
    with pytest.raises(RuntimeError, match='nan or infinite'):
        clip_grad_norm_(p, 1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match='max_norm must be > 0, got -1'):
        clip_grad_norm_(p, -1)
    q = param([0.0], [10.0])
    assert clip_grad_norm_(q, 2.0) == pytest.approx(10.0)                      # a single tensor is accepted
    assert q.grad[0] == pytest.approx(2.0, rel=1e-5)


# ---------------------------------------------------------------- schedules

def lrs_of(make_scheduler, steps, metrics=None, lr=1.0):
    opt = SGD([Parameter([0.0])], lr=lr)
    sched = make_scheduler(opt)
    out = []
    for t in range(steps):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step(metrics[t]) if metrics is not None else sched.step()
    return out


def test_step_and_cosine_schedules():
    assert lrs_of(lambda o: StepLR(o, 3, 0.5), 8) == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25]
    cos = lrs_of(lambda o: CosineAnnealingLR(o, T_max=4, eta_min=0.2), 5)
    np.testing.assert_allclose(cos, [1.0, 0.2 + 0.8 * (1 + math.cos(math.pi / 4)) / 2, 0.6,
                                     0.2 + 0.8 * (1 + math.cos(3 * math.pi / 4)) / 2, 0.2])


def test_inverse_sqrt_is_the_papers_formula():
    d_model, w = 512, 4000
    lrs = lrs_of(lambda o: LambdaLR(o, inverse_sqrt_warmup(w)), 12000, lr=d_model ** -0.5 * w ** -0.5)
    paper = [d_model ** -0.5 * min(n ** -0.5, n * w ** -1.5) for n in range(1, 12001)]
    np.testing.assert_allclose(lrs, paper, rtol=1e-12)
    assert max(lrs) == pytest.approx(7.0e-4, rel=0.01)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 50), st.integers(1, 200), st.floats(0, 1), st.integers(0, 400))
def test_linear_warmup_decay_properties(warmup, extra, final, step):
    f = linear_warmup_decay(warmup, warmup + extra, final)
    assert 0 <= f(step) <= 1.0 + 1e-12
    assert final - 1e-12 <= f(warmup + step) <= 1.0 + 1e-12
    if warmup:
        assert f(warmup - 1) == pytest.approx(1.0)
        assert f(0) == pytest.approx(1 / warmup)
    assert f(warmup + extra + step) == pytest.approx(final)
    values = [f(t) for t in range(warmup, warmup + extra + 1)]
    assert all(a >= b - 1e-12 for a, b in zip(values, values[1:]))          # non-increasing after warmup


def test_reduce_on_plateau_rules():
    metrics = [1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert lrs_of(lambda o: ReduceLROnPlateau(o, factor=0.5, patience=2), 8, metrics) == \
        [1, 1, 1, 1, 1, 0.5, 0.5, 0.5]
    sched = ReduceLROnPlateau(SGD([Parameter([0.0])], lr=1.0), patience=0, min_lr=0.05)
    for _ in range(5):
        sched.step(1.0)
    assert sched.get_last_lr() == [0.05]                                      # never below min_lr


def test_scheduler_state_dicts_resume():
    opt = SGD([Parameter([0.0])], lr=1.0)
    sched = CosineAnnealingLR(opt, T_max=10)
    for _ in range(4):
        opt.step()
        sched.step()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    opt2 = SGD([Parameter([0.0])], lr=1.0)
    sched2 = CosineAnnealingLR(opt2, T_max=10)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert sched2.get_last_lr() == sched.get_last_lr()
    for _ in range(3):
        sched.step()
        sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr() and sched2.last_epoch == 7

    plateau = ReduceLROnPlateau(opt, patience=1)
    for m in [1.0, 2.0]:
        plateau.step(m)
    other = ReduceLROnPlateau(opt, patience=1)
    other.load_state_dict(plateau.state_dict())
    assert (other.best, other.num_bad_epochs, other.last_epoch) == (1.0, 1, 2)


# ---------------------------------------------------------------- early stopping

def test_early_stopping():
    stopper = EarlyStopping(patience=2)
    assert [stopper.step(v) for v in [3.0, 2.0, 2.5, 2.0]] == [False, False, False, True]   # 2.0 again: no gain
    assert (stopper.best, stopper.best_epoch, stopper.should_stop) == (2.0, 1, True)
    saved = stopper.state_dict()
    assert all(isinstance(v, (int, float, bool)) for v in saved.values())
    other = EarlyStopping(patience=2)
    other.load_state_dict({k: np.asarray(v) for k, v in saved.items()})                       # as from .npz
    assert other.state_dict() == saved
    model = make_model()
    stopper = EarlyStopping(patience=3, mode='max')
    stopper.step(0.5, model)
    best = model.state_dict()
    train(model, Adam(model.parameters(), lr=0.1), steps=3)
    assert stopper.step(0.4, model) is False and not stopper.improved
    model.load_state_dict(stopper.best_state)
    assert all(np.array_equal(v, best[k]) for k, v in model.state_dict().items())


def test_early_stopping_errors():
    with pytest.raises(ValueError, match='patience must be an integer >= 1, got 0'):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        EarlyStopping(mode='lowest')
    with pytest.raises(ValueError, match='min_delta must be >= 0'):
        EarlyStopping(min_delta=-1)


# ---------------------------------------------------------------- LR finder

def stream(seed=0):
    rng = np.random.default_rng(seed)
    while True:
        x = rng.standard_normal((16, 5)).astype(np.float32)
        yield x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)


def test_lr_find_ramps_and_restores():
    model = make_model()
    opt = Adam(model.parameters(), lr=3e-4)
    train(model, opt, steps=2)
    before, opt_before = model.state_dict(), opt.state_dict()
    found = lr_find(model, opt, lambda b: cross_entropy(model(Tensor(b[0])), b[1]), stream(),
                    start_lr=1e-6, end_lr=1.0, num_iter=30)
    assert len(found.lrs) == len(found.losses) <= 30
    np.testing.assert_allclose(found.lrs, np.geomspace(1e-6, 1.0, 30)[:len(found.lrs)], rtol=1e-9)
    assert found.lrs[0] <= found.suggested_lr <= found.lrs[-1]
    assert all(np.array_equal(v, before[k]) for k, v in model.state_dict().items())
    after = opt.state_dict()
    assert after.keys() == opt_before.keys()
    assert all(np.array_equal(after[k], v) for k, v in opt_before.items())
    ax = found.plot()
    assert ax.get_xscale() == 'log'


def test_lr_find_stops_on_divergence():
    model = make_model()
    opt = SGD(model.parameters(), lr=0.1)
    found = lr_find(model, opt, lambda b: cross_entropy(model(Tensor(b[0])) * 50.0, b[1]), stream(),
                    start_lr=1e-2, end_lr=1e8, num_iter=200)
    assert len(found.lrs) < 200
    assert found.losses[-1] > 4 * np.min(found.losses[:-1]) or not np.isfinite(found.losses[-1])
    with pytest.raises(ValueError, match='end_lr > start_lr'):
        lr_find(model, opt, lambda b: None, stream(), start_lr=1.0, end_lr=0.1)


# ---------------------------------------------------------------- state dicts and resuming

def test_optimizer_state_dict_is_flat_and_npz_safe(tmp_path):
    model = make_model()
    opt = AdamW(model.parameters(), lr=1e-2, amsgrad=True)
    sched = LambdaLR(opt, linear_warmup_decay(3, 10))
    train(model, opt, steps=4, scheduler=sched)
    sd = opt.state_dict()
    assert all(isinstance(v, (int, float, bool, tuple, np.ndarray)) for v in sd.values())
    assert sd['state.0.step'] == 4 and sd['state.0.exp_avg'].shape == (16, 5)
    np.testing.assert_array_equal(sd['param_groups.0.params'], np.arange(len(list(model.parameters()))))
    sd['state.0.exp_avg'][:] = 123                       # a copy: the optimizer is untouched
    assert not (opt.state[model[0].weight]['exp_avg'] == 123).any()

    path = tmp_path / 'ckpt.npz'
    np.savez(path, **{f'model.{k}': v for k, v in model.state_dict().items()},
             **{f'optim.{k}': v for k, v in opt.state_dict().items()},
             **{f'sched.{k}': v for k, v in sched.state_dict().items()})
    train(model, opt, steps=6, scheduler=sched)
    reference = model.state_dict()

    with np.load(path) as f:
        saved = dict(f)
    part = lambda prefix: {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}
    model2 = make_model(seed=5)
    opt2 = AdamW(model2.parameters(), lr=1e-2, amsgrad=True)
    sched2 = LambdaLR(opt2, linear_warmup_decay(3, 10))
    model2.load_state_dict(part('model.'))
    opt2.load_state_dict(part('optim.'))
    sched2.load_state_dict(part('sched.'))
    assert opt2.param_groups[0]['betas'] == (0.9, 0.999) and opt2.param_groups[0]['amsgrad'] is True
    assert isinstance(opt2.state[model2[0].weight]['step'], int)
    train(model2, opt2, steps=6, scheduler=sched2)
    for k, v in model2.state_dict().items():
        np.testing.assert_array_equal(v, reference[k], err_msg=k)


def test_optimizer_load_state_dict_errors():
    model = make_model()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(model, opt, steps=1)
    sd = opt.state_dict()
    other = SGD(list(model.parameters())[:3], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match='parameter group 0 has 6 parameters in the state dict, 3 in the optimizer'):
        other.load_state_dict(sd)
    two_groups = SGD([{'params': [model[0].weight]}, {'params': [model[0].bias]}], lr=0.1)
    with pytest.raises(ValueError, match='the state dict has 1 parameter groups, the optimizer has 2'):
        two_groups.load_state_dict(sd)
    bad = dict(sd, **{'state.1.momentum_buffer': np.zeros(7)})
    with pytest.raises(ValueError, match=r"'state.1.momentum_buffer' has shape \(7,\), but parameter 1 has shape \(16,\)"):
        opt.load_state_dict(bad)
    with pytest.raises(KeyError, match="unexpected key 'momentum'"):
        opt.load_state_dict(dict(sd, momentum=0.5))


@pytest.mark.parametrize('make, message', [
    (lambda ps: SGD(ps, lr=-0.1), 'lr must be > 0, got -0.1'),
    (lambda ps: SGD(ps, lr=0), 'lr must be > 0, got 0'),
    (lambda ps: Adam(ps, lr=float('nan')), 'lr must be > 0, got nan'),
    (lambda ps: SGD(ps, lr=0.1, momentum=-0.5), 'momentum must be >= 0, got -0.5'),
    (lambda ps: SGD(ps, lr=0.1, nesterov=True), 'nesterov momentum needs momentum > 0 and dampening = 0'),
    (lambda ps: Adam(ps, betas=(0.9, 1.5)), r'betas must be two numbers in \[0, 1\), got \(0.9, 1.5\)'),
    (lambda ps: Adam(ps, eps=-1e-8), 'eps must be >= 0'),
    (lambda ps: AdamW(ps, weight_decay=-0.01), 'weight_decay must be >= 0, got -0.01'),
    (lambda ps: Adam([{'params': ps, 'lr': -1.0}]), 'lr must be > 0, got -1.0'),
])
def test_hyperparameter_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make(list(make_model().parameters()))


def test_parameter_list_errors():
    model = make_model()
    with pytest.raises(ValueError, match='empty parameter list'):
        Adam([])
    with pytest.raises(TypeError, match='can only optimize leaf tensors'):
        SGD([np.ones(3)], lr=0.1)
    with pytest.raises(TypeError, match='can only optimize leaf tensors'):
        SGD([model[0].weight * 2.0], lr=0.1)
    p = model[0].weight
    with pytest.raises(ValueError, match='more than one parameter group'):
        SGD([{'params': [p]}, {'params': [p]}], lr=0.1)
    with pytest.raises(ValueError, match=r'factor must be in \(0, 1\), got 2'):
        ReduceLROnPlateau(SGD([p], lr=0.1), factor=2)
    with pytest.raises(ValueError, match='step_size must be > 0'):
        StepLR(SGD([p], lr=0.1), step_size=0)
    with pytest.raises(ValueError, match='expected 1 lr_lambdas'):
        LambdaLR(SGD([p], lr=0.1), [lambda t: 1.0, lambda t: 1.0])
    with pytest.raises(TypeError, match="lr_lambda must be a function of the step .* got float: 0.5"):
        LambdaLR(SGD([p], lr=0.1), 0.5)           # PyTorch fails later, in step(): "'float' object is not callable"


# ---------------------------------------------------------------- against PyTorch

def _torch_twin(torch, model):
    twin = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.GELU(), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))
    twin.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    return twin


OPTIMIZERS = [
    ('SGD', dict(lr=0.1)),
    ('SGD', dict(lr=0.1, momentum=0.9)),
    ('SGD', dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ('SGD', dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.1)),
    ('Adam', dict(lr=1e-2)),
    ('Adam', dict(lr=1e-2, betas=(0.8, 0.98), eps=1e-9, weight_decay=0.1)),
    ('Adam', dict(lr=1e-2, amsgrad=True)),
    ('AdamW', dict(lr=1e-2)),
    ('AdamW', dict(lr=1e-2, weight_decay=0.3, amsgrad=True)),
]


@pytest.mark.torch
@pytest.mark.parametrize('name, kwargs', OPTIMIZERS, ids=[f'{n}-{i}' for i, (n, _) in enumerate(OPTIMIZERS)])
def test_ten_steps_match_torch(name, kwargs):
    torch = torch_or_skip()
    model = make_model()
    twin = _torch_twin(torch, model)
    ours = {'SGD': SGD, 'Adam': Adam, 'AdamW': AdamW}[name](model.parameters(), **kwargs)
    theirs = getattr(torch.optim, name)(twin.parameters(), **kwargs)
    for x, y in DATA:
        loss = cross_entropy(model(Tensor(x)), y)
        ours.zero_grad()
        loss.backward()
        ours.step()
        tloss = torch.nn.functional.cross_entropy(twin(torch.tensor(x)), torch.tensor(y))
        theirs.zero_grad()
        tloss.backward()
        theirs.step()
    ref = twin.state_dict()
    for key, value in model.state_dict().items():
        np.testing.assert_allclose(value, ref[key].numpy(), atol=2e-6, err_msg=key)
    # the optimizer state too, under PyTorch's names
    tstate = theirs.state_dict()['state']
    sd = ours.state_dict()
    for i, entries in tstate.items():
        for k, v in entries.items():
            np.testing.assert_allclose(sd[f'state.{i}.{k}'], v.numpy(), atol=2e-6, err_msg=f'state.{i}.{k}')


@pytest.mark.torch
def test_param_groups_and_clipping_match_torch():
    torch = torch_or_skip()
    model = make_model()
    twin = _torch_twin(torch, model)
    ps, tps = list(model.parameters()), list(twin.parameters())
    ours = AdamW([{'params': ps[:2], 'weight_decay': 0.1}, {'params': ps[2:], 'lr': 3e-3, 'weight_decay': 0.0}], lr=1e-2)
    theirs = torch.optim.AdamW([{'params': tps[:2], 'weight_decay': 0.1},
                                {'params': tps[2:], 'lr': 3e-3, 'weight_decay': 0.0}], lr=1e-2)
    sched = LambdaLR(ours, linear_warmup_decay(3, 10))
    tsched = torch.optim.lr_scheduler.LambdaLR(theirs, linear_warmup_decay(3, 10))
    for x, y in DATA:
        loss = cross_entropy(model(Tensor(x)) * 5.0, y)
        ours.zero_grad()
        loss.backward()
        norm = clip_grad_norm_(model.parameters(), 0.5)
        ours.step()
        sched.step()
        tloss = torch.nn.functional.cross_entropy(twin(torch.tensor(x)) * 5.0, torch.tensor(y))
        theirs.zero_grad()
        tloss.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5)
        theirs.step()
        tsched.step()
        assert norm == pytest.approx(tnorm.item(), rel=1e-5)
        assert sched.get_last_lr() == pytest.approx(tsched.get_last_lr(), rel=1e-12)
    ref = twin.state_dict()
    for key, value in model.state_dict().items():
        np.testing.assert_allclose(value, ref[key].numpy(), atol=2e-6, err_msg=key)


@pytest.mark.torch
@pytest.mark.parametrize('norm_type', [1.0, 2.0, 3.0, math.inf])
def test_clip_grad_norm_matches_torch(norm_type):
    torch = torch_or_skip()
    grads = [RNG.standard_normal(s).astype(np.float32) for s in [(4, 3), (7,), (2, 2, 2)]]
    ours = [param(np.zeros(g.shape), g) for g in grads]
    theirs = [torch.zeros(g.shape, requires_grad=True) for g in grads]
    for t, g in zip(theirs, grads):
        t.grad = torch.tensor(g)
    total = clip_grad_norm_(ours, 1.5, norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(theirs, 1.5, norm_type)
    assert total == pytest.approx(ttotal.item(), rel=1e-5)
    for o, t in zip(ours, theirs):
        np.testing.assert_allclose(o.grad, t.grad.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.torch
@pytest.mark.parametrize('case', ['step', 'cosine', 'cosine_past_T', 'lambda_linear', 'lambda_invsqrt'])
def test_schedules_match_torch(case):
    torch = torch_or_skip()
    sched = torch.optim.lr_scheduler
    makers = {
        'step': (lambda o: StepLR(o, 7, 0.5), lambda o: sched.StepLR(o, 7, 0.5)),
        'cosine': (lambda o: CosineAnnealingLR(o, 50, 0.01), lambda o: sched.CosineAnnealingLR(o, 50, 0.01)),
        'cosine_past_T': (lambda o: CosineAnnealingLR(o, 20), lambda o: sched.CosineAnnealingLR(o, 20)),
        'lambda_linear': (lambda o: LambdaLR(o, linear_warmup_decay(10, 50, 0.1)),
                          lambda o: sched.LambdaLR(o, linear_warmup_decay(10, 50, 0.1))),
        'lambda_invsqrt': (lambda o: LambdaLR(o, inverse_sqrt_warmup(8)),
                           lambda o: sched.LambdaLR(o, inverse_sqrt_warmup(8))),
    }
    make_ours, make_theirs = makers[case]
    ours = lrs_of(make_ours, 60, lr=0.5)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    s = make_theirs(opt)
    theirs = []
    for _ in range(60):
        theirs.append(s.get_last_lr()[0])
        opt.step()
        s.step()
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-15)


@pytest.mark.torch
@pytest.mark.parametrize('kwargs', [dict(), dict(factor=0.5, patience=3, cooldown=2, min_lr=0.05),
                                    dict(threshold_mode='abs', threshold=0.01, patience=2),
                                    dict(mode='max', patience=1, factor=0.3)])
def test_reduce_on_plateau_matches_torch(kwargs):
    torch = torch_or_skip()
    rng = np.random.default_rng(1)
    metrics = np.maximum(1 / np.arange(1, 81) ** 0.5, 0.3) + rng.normal(0, 0.01, 80)
    if kwargs.get('mode') == 'max':
        metrics = -metrics
    ours = lrs_of(lambda o: ReduceLROnPlateau(o, **kwargs), 80, metrics)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    s = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    theirs = []
    for m in metrics:
        theirs.append(opt.param_groups[0]['lr'])
        opt.step()
        s.step(float(m))
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
