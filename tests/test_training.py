"""tinytorch.training as a library: the reversal data, batching, checkpoints (atomic, exact resume, wrong
configuration), the training loop with schedules and early stopping, the command line, and accuracy."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinytorch.nn import default_generator, manual_seed
from tinytorch.optim import Adam, EarlyStopping, LambdaLR, ReduceLROnPlateau, StepLR, linear_warmup_decay
from tinytorch.tokenization import BOS_ID as BOS, EOS_ID as EOS, PAD_ID as PAD
from tinytorch.training import (FIRST_SYMBOL, DataLoader, History, accuracy_counts, atomic_write, evaluate,
                                exact_match, fit, load_checkpoint, reversal_pairs, reversal_splits, save_checkpoint,
                                teacher_forcing, train_step)
from tinytorch.transformer import Seq2SeqTransformer, TransformerConfig

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- data

@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(FIRST_SYMBOL + 1, 30), st.integers(0, 2**31), st.data())
def test_reversal_pairs_properties(seq_len, vocab_size, seed, data):
    min_len = data.draw(st.integers(1, seq_len))
    src, tgt = reversal_pairs(50, seq_len, vocab_size, min_len, seed)
    assert src.shape == (50, seq_len) and tgt.shape == (50, seq_len + 2) and src.dtype == tgt.dtype == np.int64
    lengths = (src != PAD).sum(1)
    assert ((lengths >= min_len) & (lengths <= seq_len)).all()
    for s, t, L in zip(src, tgt, lengths):
        assert (s[:L] >= FIRST_SYMBOL).all() and (s[:L] < vocab_size).all() and (s[L:] == PAD).all()
        assert t[0] == BOS and (t[1:L + 1] == s[:L][::-1]).all() and t[L + 1] == EOS and (t[L + 2:] == PAD).all()


def test_splits_are_disjoint_and_seeded():
    splits = reversal_splits({'train': 3000, 'val': 300, 'test': 1000}, seq_len=3, vocab_size=20, min_len=1, seed=4)
    rows = {name: {tuple(r) for r in s} for name, (s, t) in splits.items()}
    assert [len(r) for r in rows.values()] == [3000, 300, 1000]        # no duplicates inside a split either
    assert not (rows['train'] & rows['test'] or rows['train'] & rows['val'] or rows['val'] & rows['test'])
    again = reversal_splits({'train': 3000, 'val': 300, 'test': 1000}, seq_len=3, vocab_size=20, min_len=1, seed=4)
    assert all((splits[k][0] == again[k][0]).all() for k in splits)
    with pytest.raises(ValueError, match='cannot draw'):
        reversal_splits({'train': 20}, seq_len=1, vocab_size=10)         # only 6 distinct sequences exist
    assert sorted(reversal_splits({'train': 6}, seq_len=1, vocab_size=10)['train'][0][:, 0]) == list(range(4, 10))


def test_dataloader_epochs_and_resume():
    src, tgt = reversal_pairs(50)
    loader = DataLoader(src, tgt, batch_size=8, shuffle=True, seed=3)
    assert len(loader) == 7
    first = np.concatenate([b[0] for b in loader])
    assert sorted(map(tuple, first)) == sorted(map(tuple, src))
    state = loader.state_dict()
    second = np.concatenate([b[0] for b in loader])
    resumed = DataLoader(src, tgt, batch_size=8, shuffle=True, seed=99)
    resumed.load_state_dict(json.loads(json.dumps(state)))          # survives the JSON of a checkpoint
    assert (np.concatenate([b[0] for b in resumed]) == second).all()
    with pytest.raises(ValueError, match='same first dimension'):
        DataLoader(src, tgt[:3])
    with pytest.raises(ValueError, match='batch_size'):
        DataLoader(src, batch_size=0)


def test_accuracy_counts_match_a_loop():
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((20, 6, 5)), rng.integers(0, 5, (20, 6))
    labels[:, 4:] = PAD
    pred = logits.argmax(-1)
    tokens = [(p == l) for P, L in zip(pred, labels) for p, l in zip(P, L) if l != PAD]
    exact = [all(p == l for p, l in zip(P, L) if l != PAD) for P, L in zip(pred, labels)]
    assert accuracy_counts(logits, labels) == (sum(tokens), len(tokens), sum(exact), 20)


# ---------------------------------------------------------------- checkpoints

def _tiny(seed=0, **changes):
    manual_seed(seed)
    return Seq2SeqTransformer(TransformerConfig.preset('tiny', **changes))


def test_checkpoint_round_trip(tmp_path):
    model = _tiny()
    optimizer = Adam(model.parameters(), lr=1e-3)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.5)
    src, tgt = reversal_pairs(8)
    train_step(model, optimizer, src, tgt)
    scheduler.step()
    path = save_checkpoint(tmp_path / 'c.npz', model, optimizer, scheduler, epoch=3, note='hello', curve=[1.0, 0.5])
    rng_state = default_generator().bit_generator.state
    other = _tiny(seed=5)
    other_opt = Adam(other.parameters(), lr=0.5)
    other_sched = StepLR(other_opt, step_size=1, gamma=0.5)
    default_generator().random(10)
    extra = load_checkpoint(path, other, other_opt, other_sched)
    assert extra == dict(epoch=3, note='hello', curve=[1.0, 0.5])
    assert all((a == b).all() for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    assert default_generator().bit_generator.state == rng_state
    assert other_sched.last_epoch == scheduler.last_epoch and other_opt.param_groups[0]['lr'] == 5e-4
    ours, theirs = optimizer.state_dict(), other_opt.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert np.array_equal(ours[k], theirs[k]), k
    with np.load(path, allow_pickle=False) as f:          # plain .npz: readable without tinytorch or pickle
        assert 'state/model/generator.weight' in f.files


def test_checkpoint_from_another_configuration_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / 'c.npz', _tiny())
    with pytest.raises(ValueError, match=r"another configuration: d_model=64 \(checkpoint\) vs 128 \(model\)"):
        load_checkpoint(path, Seq2SeqTransformer(TransformerConfig()))
    with pytest.raises(ValueError, match="norm_first=False \\(checkpoint\\) vs True"):
        load_checkpoint(path, _tiny(norm_first=True))              # same shapes: would load silently otherwise
    load_checkpoint(path, _tiny(dropout=0.2, learning_rate=0.5))   # a training run's settings may differ
    from tinytorch.nn import Linear
    with pytest.raises(ValueError, match='does not fit this Linear'):
        load_checkpoint(path, Linear(3, 4))
    (tmp_path / 'junk.npz').write_bytes(b'not a zip file')
    with pytest.raises(Exception):
        load_checkpoint(tmp_path / 'junk.npz', _tiny())
    np.savez(tmp_path / 'plain.npz', a=np.zeros(3))
    with pytest.raises(ValueError, match='not a tinytorch checkpoint'):
        load_checkpoint(tmp_path / 'plain.npz', _tiny())
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / 'missing.npz', _tiny())
    with pytest.raises(ValueError, match='no optimizer state'):
        m = _tiny()
        load_checkpoint(path, m, Adam(m.parameters()))


def test_atomic_write_survives_an_exception(tmp_path):
    target = tmp_path / 'c.npz'
    atomic_write(target, lambda f: f.write(b'old'))

    def boom(f):
        f.write(b'x' * 1000)
        raise RuntimeError('crash')
    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_bytes() == b'old' and [p.name for p in tmp_path.iterdir()] == ['c.npz']


_SAVER = """
import sys, numpy as np
sys.path.insert(0, {root!r})
from tinytorch.training import save_checkpoint
from tinytorch.nn import Linear
model = Linear(2000, 2000)          # ~16 MB per checkpoint: a save takes a while
print('ready', flush=True)
i = 0
while True:
    i += 1
    model.weight.data[...] = i
    save_checkpoint({path!r}, model, epoch=i)
"""


@pytest.mark.slow
def test_killed_during_saves_leaves_a_loadable_checkpoint(tmp_path):
    "SIGKILL a process that saves checkpoints in a loop, at many points in time: the file always loads whole."
    from tinytorch.nn import Linear
    path = tmp_path / 'c.npz'
    rng = np.random.default_rng(0)
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, '-c', _SAVER.format(root=str(ROOT), path=str(path))],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == 'ready'
        time.sleep(0.3 + rng.uniform(0, 0.7))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not path.exists():
            continue
        model = Linear(2000, 2000)
        extra = load_checkpoint(path, model)
        assert (model.weight.data == extra['epoch']).all()       # a complete checkpoint, never a mix or a stub
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != 'c.npz']
    assert leftovers, 'no kill landed in the middle of a save: the test proved nothing'
    assert all(name.endswith('.tmp') for name in leftovers)      # only killed writers' temporary files remain


# ---------------------------------------------------------------- the training loop and resuming

def _run(tmp_path, epochs, schedule, resume=False, interrupt_at=None, early=False):
    "A tiny run; `interrupt_at=(epoch, step)` raises KeyboardInterrupt in the middle of that epoch."
    config = TransformerConfig.preset('tiny', learning_rate=1e-3)
    data = reversal_splits({'train': 256, 'val': 64}, seq_len=6, seed=1)
    manual_seed(11)
    model = Seq2SeqTransformer(config.replace(seq_len=6))
    optimizer = Adam(model.parameters(), lr=config.learning_rate)
    scheduler, interval = {
        'step': (lambda: StepLR(optimizer, step_size=1, gamma=0.7), 'epoch'),
        'warmup': (lambda: LambdaLR(optimizer, linear_warmup_decay(5, 40)), 'step'),
        'plateau': (lambda: ReduceLROnPlateau(optimizer, factor=0.5, patience=0), 'epoch'),
        None: (lambda: None, 'epoch')}[schedule]
    scheduler = scheduler()
    loader = DataLoader(*data['train'], batch_size=32, shuffle=True, seed=2)
    if interrupt_at is not None:
        loader = _Interrupting(loader, *interrupt_at)
    return fit(model, loader, DataLoader(*data['val'], batch_size=64), optimizer=optimizer, epochs=epochs,
               scheduler=scheduler, scheduler_interval=interval, clip_grad_norm=1.0,
               early_stopping=EarlyStopping(patience=1, min_delta=10.0) if early else None,
               checkpoint=tmp_path / 'run.npz', resume=resume, progress=False), model


class _Interrupting:
    "A loader that dies (KeyboardInterrupt) at step `step` of epoch `epoch` (1-based), like a Ctrl-C."

    def __init__(self, loader, epoch, step):
        self.loader, self.epoch, self.step, self.calls = loader, epoch, step, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.calls += 1
        for i, batch in enumerate(self.loader):
            if self.calls == self.epoch and i == self.step:
                raise KeyboardInterrupt
            yield batch

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)


@pytest.mark.slow
@pytest.mark.parametrize('schedule', [None, 'step', 'warmup', 'plateau'])
def test_interrupt_and_resume_gives_the_same_losses(tmp_path, schedule):
    full, model = _run(tmp_path / 'a', 4, schedule)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / 'b', 4, schedule, interrupt_at=(3, 4))            # dies in the middle of epoch 3
    resumed, resumed_model = _run(tmp_path / 'b', 4, schedule, resume=True)
    assert resumed['epoch'] == [1, 2, 3, 4]
    assert resumed['step_loss'] == full['step_loss']                       # bit for bit
    assert resumed['val_loss'] == full['val_loss'] and resumed['lr'] == full['lr']
    for a, b in zip(model.state_dict().values(), resumed_model.state_dict().values()):
        np.testing.assert_array_equal(a, b)


def test_resume_after_the_last_epoch_does_nothing(tmp_path):
    first, _ = _run(tmp_path, 2, None)
    again, _ = _run(tmp_path, 2, None, resume=True)
    assert again == first


def test_early_stopping_stops_and_restores_the_best_weights(tmp_path):
    history, model = _run(tmp_path, 6, None, early=True)
    assert history.epochs == 2                               # min_delta=10: the second epoch cannot "improve"
    best = load_checkpoint(tmp_path / 'run.npz', _tiny(seq_len=6))['best_state']
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, best[k])
    again, resumed = _run(tmp_path, 6, None, early=True, resume=True)   # it had stopped: resuming trains no more
    assert again['step_loss'] == history['step_loss']
    for k, v in resumed.state_dict().items():
        np.testing.assert_array_equal(v, best[k])


def test_history_plot_and_evaluate(tmp_path):
    history, model = _run(tmp_path, 2, 'step')
    assert set(history) >= {'epoch', 'train_loss', 'val_loss', 'val_token_acc', 'val_seq_acc', 'lr', 'seconds',
                            'step_loss'}
    assert len(history['step_loss']) == 2 * 8 and history['lr'] == pytest.approx([1e-3, 7e-4])
    fig = history.plot('test')
    assert len(fig.axes) == 3
    src, tgt = reversal_pairs(64, seq_len=6, seed=9)
    metrics = evaluate(model, DataLoader(src, tgt, batch_size=20))
    assert 0 <= metrics['token_acc'] <= 1 and metrics['loss'] > 0
    assert model.training


def test_progress_bar_is_tqdm(tmp_path, capsys):
    config = TransformerConfig.preset('tiny').replace(seq_len=4)
    manual_seed(0)
    model = Seq2SeqTransformer(config)
    src, tgt = reversal_pairs(64, seq_len=4)
    fit(model, DataLoader(src, tgt, batch_size=32), optimizer=Adam(model.parameters()), epochs=1, progress=True)
    err = capsys.readouterr().err
    assert 'epoch 1/1' in err and '2/2' in err and 'loss' in err


def test_fit_argument_errors():
    model = _tiny()
    with pytest.raises(ValueError, match='scheduler_interval'):
        fit(model, DataLoader(*reversal_pairs(4)), optimizer=Adam(model.parameters()), epochs=1,
            scheduler_interval='batch')


# ---------------------------------------------------------------- accuracy and the command line

@pytest.mark.slow
def test_tiny_preset_learns_reversal():
    "The tiny preset reaches >= 99% exact match on 1,000 held-out sequences within a few minutes on one core."
    config = TransformerConfig.preset('tiny', learning_rate=1e-3)
    data = reversal_splits({'train': 4000, 'val': 500, 'test': 1000}, seed=3)
    manual_seed(0)
    model = Seq2SeqTransformer(config)
    start = time.perf_counter()
    history = fit(model, DataLoader(*data['train'], batch_size=config.batch_size, shuffle=True, seed=0),
                  DataLoader(*data['val'], batch_size=500), optimizer=Adam(model.parameters(), lr=1e-3),
                  epochs=25, clip_grad_norm=1.0, progress=False,
                  callback=lambda epoch, h: h['val_seq_acc'][-1] >= 0.995)
    accuracy = exact_match(model, *data['test'])
    assert accuracy >= 0.99, (accuracy, history['val_seq_acc'])
    assert time.perf_counter() - start < 300


@pytest.mark.slow
def test_command_line_runs_end_to_end(tmp_path):
    out = tmp_path / 'demo'
    run = subprocess.run([sys.executable, '-m', 'tinytorch.training', 'reversal', '--preset', 'tiny', '--epochs', '2',
                          '--lr', '1e-3', '--train-size', '600', '--out', str(out), '--no-progress'],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr
    assert 'held-out exact match' in run.stdout and '->' in run.stdout
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['epochs'] == 2 and 0 <= summary['test_exact_match'] <= 1
    assert (out / 'curves.png').stat().st_size > 0 and (out / 'attention.png').stat().st_size > 0
    again = subprocess.run([sys.executable, '-m', 'tinytorch.training', 'reversal', '--preset', 'tiny', '--epochs', '3',
                            '--lr', '1e-3', '--train-size', '600', '--out', str(out), '--no-progress', '--resume'],
                           capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 0, again.stderr
    assert json.loads((out / 'summary.json').read_text())['epochs'] == 3
    bad = subprocess.run([sys.executable, '-m', 'tinytorch.training', 'reversal', '--preset', 'small', '--epochs', '1',
                          '--out', str(out), '--resume', '--no-progress'], capture_output=True, text=True, cwd=ROOT,
                         timeout=600)
    assert bad.returncode != 0 and 'another configuration' in bad.stderr
