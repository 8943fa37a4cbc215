"""Faults that must never pass silently: a non-finite loss in training, an empty loader, an interrupted learning
rate sweep, damaged checkpoint files, bad prompts to `GPT.generate`, and attention run from two threads."""
import io
import json
import pickle
import threading
import zipfile

import numpy as np
import pytest

from tinytorch.nn import Linear, manual_seed
from tinytorch.optim import SGD, Adam, lr_find
from tinytorch.tensor import Tensor
from tinytorch.nn import cross_entropy
from tinytorch.training import (CheckpointError, DataLoader, evaluate, fit, load_checkpoint, reversal_pairs,
                                save_checkpoint)
from tinytorch.transformer import Seq2SeqTransformer, TransformerConfig


def _tiny(seed=0, **changes):
    manual_seed(seed)
    return Seq2SeqTransformer(TransformerConfig.preset('tiny', seq_len=6, **changes))


def _loader(n=64, batch_size=32, **kw):
    return DataLoader(*reversal_pairs(n, seq_len=6, seed=3), batch_size=batch_size, **kw)


# ---------------------------------------------------------------- fit: the first non-finite loss stops training

class _PoisonAt:
    "A loader whose batch number `at` (1-based, counted over all epochs) makes the model's loss NaN."

    def __init__(self, loader, model, at):
        self.loader, self.model, self.at, self.count = loader, model, at, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.count += 1
            if self.count == self.at:
                self.model.generator.bias.data[0] = np.nan     # every logit row has a NaN: the loss is NaN
            yield batch

    def state_dict(self):
        return self.loader.state_dict()


@pytest.mark.parametrize('at, epoch, step', [(1, 1, 1), (4, 2, 2)])
def test_fit_stops_at_the_first_nan_loss_naming_epoch_and_step(tmp_path, at, epoch, step):
    model = _tiny()
    optimizer = Adam(model.parameters(), lr=1e-3)
    loader = _PoisonAt(_loader(), model, at)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(FloatingPointError, match=f'epoch {epoch}, step {step} of 2: the loss is nan'):
        fit(model, loader, optimizer=optimizer, epochs=5, checkpoint=tmp_path / 'run.npz', progress=False)
    assert loader.count == at                                  # not one batch more
    weights = {k: v for k, v in model.state_dict().items() if k != 'generator.bias'}
    assert all(np.isfinite(v).all() for v in weights.values())  # the NaN step updated nothing
    if epoch == 1:
        assert not (tmp_path / 'run.npz').exists()
        assert all(np.array_equal(v, before[k]) for k, v in weights.items())
    else:                                                      # the checkpoint of epoch 1 is intact and finite
        good = _tiny(seed=9)
        assert load_checkpoint(tmp_path / 'run.npz', good)['epoch'] == 1
        assert all(np.isfinite(v).all() for v in good.state_dict().values())


def test_fit_never_overwrites_a_checkpoint_with_non_finite_weights(tmp_path):
    model = _tiny()
    optimizer = Adam(model.parameters(), lr=1e-3)
    fit(model, _loader(), optimizer=optimizer, epochs=1, checkpoint=tmp_path / 'run.npz', progress=False)
    good = (tmp_path / 'run.npz').read_bytes()

    def poison(epoch, history):                               # finite losses, but the weights end up infinite
        model.transformer.encoder.layers[0].linear1.weight.data[0, 0] = np.inf
    with pytest.raises(FloatingPointError, match=r'epoch 2: parameter transformer\.encoder\.layers\.0\.linear1\.weight'):
        fit(model, _loader(), optimizer=optimizer, epochs=2, checkpoint=tmp_path / 'run.npz', resume=True,
            progress=False, callback=poison)
    assert (tmp_path / 'run.npz').read_bytes() == good


@pytest.mark.parametrize('make', [lambda: _loader(n=0), lambda: _loader(n=10, batch_size=32, drop_last=True)])
def test_fit_with_an_empty_training_loader_is_an_error(make, recwarn):
    model = _tiny()
    with pytest.raises(ValueError, match='train_loader gives no batches'):
        fit(model, make(), optimizer=Adam(model.parameters()), epochs=1, progress=False)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_evaluate_on_an_empty_loader_is_an_error():
    with pytest.raises(ValueError, match='no target tokens'):
        evaluate(_tiny(), _loader(n=0))


# ---------------------------------------------------------------- lr_find restores everything, on every exit

def _linear_problem():
    manual_seed(1)
    model = Linear(4, 3)
    optimizer = SGD(model.parameters(), lr=0.123, momentum=0.9)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    model(Tensor(x)).sum().backward()                     # some gradients to keep
    optimizer.step()                                      # and some momentum
    return model, optimizer, x, y


def _snapshot(model, optimizer):
    return ({k: v.copy() for k, v in model.state_dict().items()},
            {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in optimizer.state_dict().items()},
            [None if p.grad is None else p.grad.copy() for p in model.parameters()])


def _same(a, b):
    for x, y in zip(a, b):
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            for k in x:
                assert np.array_equal(x[k], y[k]), k
        else:
            for g, h in zip(x, y):
                assert (g is None and h is None) or np.array_equal(g, h)


@pytest.mark.parametrize('fault', [ZeroDivisionError, KeyboardInterrupt])
def test_lr_find_restores_model_optimizer_and_lr_when_interrupted(fault):
    model, optimizer, x, y = _linear_problem()
    before = _snapshot(model, optimizer)
    calls = []

    def loss_fn(batch):
        calls.append(1)
        if len(calls) == 5:
            raise fault('stop')
        return cross_entropy(model(Tensor(batch[0])), batch[1])
    with pytest.raises(fault):
        lr_find(model, optimizer, loss_fn, iter(lambda: (x, y), None), start_lr=1e-3, end_lr=10.0, num_iter=50)
    assert optimizer.param_groups[0]['lr'] == 0.123
    _same(_snapshot(model, optimizer), before)


def test_lr_find_all_nan_sweep_has_no_suggestion():
    model, optimizer, x, y = _linear_problem()
    before = _snapshot(model, optimizer)
    found = lr_find(model, optimizer, lambda b: cross_entropy(model(Tensor(b[0])), b[1]) * np.nan,
                    iter(lambda: (x, y), None), start_lr=1e-3, end_lr=10.0, num_iter=50)
    assert found.suggested_lr is None and len(found.lrs) == 1 and np.isnan(found.losses).all()
    found.plot()                                          # draws the curve without a suggestion line
    _same(_snapshot(model, optimizer), before)


# ---------------------------------------------------------------- damaged checkpoints: one clear error, never a pickle

@pytest.fixture(scope='module')
def good_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'good.npz'
    model = _tiny()
    save_checkpoint(path, model, Adam(model.parameters()), epoch=1)
    return path.read_bytes()


def _damaged(kind, good: bytes) -> bytes:
    if kind == 'empty':
        return b''
    if kind == 'truncated':
        return good[:len(good) // 2]
    if kind == 'truncated_end':
        return good[:-30]
    if kind.startswith('bitflip'):
        data = bytearray(good)
        at = {'bitflip_start': 200, 'bitflip_middle': len(good) // 2,       # array data: the zip's CRC-32 catches it
              'bitflip_meta': good.rfind(b'"format"') + 3}[kind]            # the JSON that describes the arrays
        data[at] ^= 0x10
        return bytes(data)
    if kind == 'pickle':
        return pickle.dumps({'model': np.zeros(3)})
    if kind == 'npy':
        buf = io.BytesIO()
        np.save(buf, np.zeros(3))
        return buf.getvalue()
    if kind == 'object_array':
        buf = io.BytesIO()
        np.savez(buf, **{'meta.json': np.array([{'a': 1}], dtype=object)})
        return buf.getvalue()
    if kind == 'foreign_zip':
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, 'w') as z:
            z.writestr('hello.txt', 'not a checkpoint')
        return buf.getvalue()
    if kind == 'bad_json':
        buf = io.BytesIO()
        np.savez(buf, **{'meta.json': np.frombuffer(b'{"format": ', dtype=np.uint8)})
        return buf.getvalue()
    if kind == 'no_state':
        buf = io.BytesIO()
        np.savez(buf, **{'meta.json': np.frombuffer(json.dumps({'format': 'tinytorch-checkpoint-1'}).encode(),
                                                    dtype=np.uint8)})
        return buf.getvalue()
    return b'not a zip file at all'


@pytest.mark.parametrize('kind', ['empty', 'truncated', 'truncated_end', 'bitflip_start', 'bitflip_middle',
                                  'bitflip_meta', 'pickle', 'npy', 'object_array', 'foreign_zip', 'bad_json',
                                  'no_state', 'text'])
def test_a_damaged_checkpoint_is_one_clear_error_naming_the_path(tmp_path, good_checkpoint, kind):
    path = tmp_path / f'{kind}.npz'
    path.write_bytes(_damaged(kind, good_checkpoint))
    model = _tiny(seed=4)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, model, Adam(model.parameters()))
    message = str(e.value)
    assert str(path) in message and 'tinytorch checkpoint' in message
    assert 'allow_pickle' not in message                  # no advice to unpickle an untrusted file
    assert ('pickled' in message) == (kind == 'pickle')   # a text or damaged file is not called a pickle
    assert isinstance(e.value, ValueError)
    assert all(np.array_equal(v, before[k]) for k, v in model.state_dict().items())   # nothing half-loaded


def test_a_pickle_is_never_unpickled(tmp_path, monkeypatch):
    path = tmp_path / 'evil.npz'
    path.write_bytes(pickle.dumps({'x': 1}))
    monkeypatch.setattr(pickle, 'loads', lambda *a, **k: pytest.fail('unpickled'))
    monkeypatch.setattr(pickle, 'load', lambda *a, **k: pytest.fail('unpickled'))
    with pytest.raises(CheckpointError):
        load_checkpoint(path, _tiny())


def test_a_checkpoint_from_before_share_embeddings_still_loads(tmp_path):
    model = _tiny()
    path = save_checkpoint(tmp_path / 'old.npz', model)
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(arrays['meta.json'].tobytes().decode())
    del meta['architecture']['share_embeddings'], meta['config']['share_embeddings']
    arrays['meta.json'] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **arrays)
    load_checkpoint(path, _tiny(seed=3))
    with pytest.raises(ValueError, match='share_embeddings=False \\(checkpoint\\) vs True'):
        load_checkpoint(path, _tiny(share_embeddings=True))


# ---------------------------------------------------------------- GPT.generate and greedy decoding check their input

from tinytorch.transformer import GPT, generate, greedy_decode, sample_next  # noqa: E402


def _gpt():
    manual_seed(5)
    return GPT(TransformerConfig(vocab_size=30, seq_len=12, d_model=16, nhead=2, num_encoder_layers=0,
                                 num_decoder_layers=1, dim_feedforward=32, positional='learned', norm_first=True))


@pytest.mark.parametrize('prompt, fragment', [
    (np.array([[1.0, 2.7]]), 'integer token ids, got float64'),     # truncating 2.7 to 2 would be a silent wrong answer
    (Tensor([[1.0, 2.0]]), 'integer token ids, got float32'),
    (np.array([1, 2]), r'shape \(2,\)'),
    (np.zeros((2, 0), np.int64), r'length >= 1'),
    ([[1.5, 2.0]], 'integer token ids'),
])
def test_generate_rejects_prompts_that_are_not_token_ids(prompt, fragment):
    with pytest.raises(TypeError, match=fragment):
        _gpt().generate(prompt, 2)


@pytest.mark.parametrize('kwargs, fragment', [
    (dict(max_new_tokens=-1), 'max_new_tokens must be an integer >= 0, got -1'),
    (dict(max_new_tokens=2.5), 'max_new_tokens'),
    (dict(max_new_tokens=2, temperature=float('nan')), 'temperature'),
    (dict(max_new_tokens=2, temperature=-0.5), 'temperature'),
    (dict(max_new_tokens=2, top_k=2.5), 'top_k'),
    (dict(max_new_tokens=2, top_k=31), r'top_k must be None or an integer in 1\.\.30'),
])
def test_generate_rejects_bad_settings_by_name(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        _gpt().generate(np.array([[1, 2]]), **kwargs)


def test_generate_with_a_seed_instead_of_a_generator_says_so():
    with pytest.raises(TypeError, match='numpy.random.Generator'):
        _gpt().generate(np.array([[1, 2]]), 2, generator=0)


def test_generate_accepts_lists_and_int32_and_zero_new_tokens():
    gpt = _gpt()
    assert gpt.generate([[1, 2]], 3).shape == (1, 5)
    np.testing.assert_array_equal(gpt.generate(np.array([[1, 2]], np.int32), 0), [[1, 2]])


def test_sample_next_refuses_nan_logits():
    logits = np.zeros((2, 5))
    logits[1, 2] = np.nan
    with pytest.raises(ValueError, match='NaN in row 1'):
        sample_next(logits)


@pytest.mark.parametrize('kwargs, fragment', [(dict(bos=20, eos=2), 'bos must be a token id'),
                                              (dict(bos=1, eos=-1), 'eos must be a token id'),
                                              (dict(bos=1, eos=2, max_len=-3), 'max_len')])
def test_greedy_decode_checks_its_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        greedy_decode(_tiny(), np.array([[3, 4, 5]]), **kwargs)


# ---------------------------------------------------------------- attention's scratch buffers belong to a thread

def test_module_keeps_no_shared_scratch_buffers():
    import tinytorch.attention as A
    assert not hasattr(A, '_SCRATCH')


@pytest.mark.parametrize('is_causal', [False, True])
def test_two_threads_running_attention_get_the_single_thread_results(is_causal):
    from tinytorch.attention import scaled_dot_product_attention
    from tinytorch.tensor import no_grad
    rng = np.random.default_rng(0)
    inputs = [tuple(rng.standard_normal((2, 4, 160, 16)).astype(np.float32) for _ in range(3)) for _ in range(2)]
    with no_grad():
        expected = [scaled_dot_product_attention(*qkv, is_causal=is_causal).data for qkv in inputs]
    results, errors, start = [[], []], [], threading.Barrier(2)

    def run(i):
        try:
            start.wait(timeout=30)
            with no_grad():
                for _ in range(25):
                    results[i].append(scaled_dot_product_attention(*inputs[i], is_causal=is_causal).data)
        except Exception as e:       # reported below: an exception in a thread would be lost
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and all(len(r) == 25 for r in results)
    for i in range(2):
        for got in results[i]:
            np.testing.assert_array_equal(got, expected[i])


@pytest.mark.torch
def test_no_grad_is_per_thread_like_torch():
    torch = pytest.importorskip('torch')
    from tinytorch.tensor import is_grad_enabled, no_grad
    inside, entered, leave = {}, threading.Event(), threading.Event()

    def other():
        with no_grad(), torch.no_grad():
            entered.set()
            leave.wait(timeout=30)
    t = threading.Thread(target=other)
    t.start()
    entered.wait(timeout=30)
    inside['ours'], inside['torch'] = is_grad_enabled(), torch.is_grad_enabled()
    leave.set()
    t.join(timeout=30)
    assert inside == {'ours': True, 'torch': True}          # the main thread still records
    x = Tensor([1.0], requires_grad=True)
    assert (x * 2.0).requires_grad
