"""Module 09 as a library: resuming training exactly, the command on your own text, sampling against transformers."""
import json

import numpy as np
import pytest

from tinytorch.nn import manual_seed
from tinytorch.tokenization import BPETokenizer, synthetic_corpus
from tinytorch.transformer import GPT
from tinytorch.language_model import (NextTokenModel, encode_texts, lm_config, main, sample_token, token_windows,
                                      top_p_filter, train_language_model)


def _data():
    texts = [synthetic_corpus(6000, seed=s) for s in range(3)]
    tok = BPETokenizer().train(texts[:2], 300)
    return tok, encode_texts(tok, texts[:2]), encode_texts(tok, texts[2:])


def _model(tok):
    manual_seed(0)
    return NextTokenModel(GPT(lm_config(tok.vocab_size).replace(seq_len=16, batch_size=4)))


def test_resume_continues_exactly(tmp_path):
    tok, train, val = _data()
    straight = _model(tok)
    h1 = train_language_model(straight, train, val, epochs=3, steps=3, progress=False)
    resumed = _model(tok)
    train_language_model(resumed, train, val, epochs=3, steps=3, checkpoint=tmp_path / 'c.npz', progress=False,
                         until=1)
    h2 = train_language_model(_model(tok), train, val, epochs=3, steps=3, checkpoint=tmp_path / 'c.npz',
                              progress=False, resume=True)
    np.testing.assert_allclose(h2['val_loss'], h1['val_loss'], rtol=1e-6)
    assert h2['epoch'] == [1, 2, 3]


def test_progress_bar_reports_what_means_something_for_a_language_model(capsys):
    "The bar shows the validation loss and next-token accuracy; exact-sequence accuracy (always 0 here) is not shown."
    tok, train, val = _data()
    h = train_language_model(_model(tok), train, val, epochs=1, steps=2, progress=True)
    err = capsys.readouterr().err
    assert f"val acc {h['val_token_acc'][-1]:.3f}" in err and f"val loss {h['val_loss'][-1]:.4f}" in err
    assert 'exact' not in err


def test_windows_cover_the_stream_in_order():
    ids = np.arange(1, 42)
    w = token_windows(ids, 8)
    assert (w[:, 1:].ravel()[:len(w) * 8] == ids[1:len(w) * 8 + 1]).all()     # every label once, in order


@pytest.mark.slow
def test_command_on_own_text(tmp_path):
    files = []
    for i in range(3):
        files.append(tmp_path / f'text{i}.txt')
        files[-1].write_text(synthetic_corpus(4000, seed=i))
    out = tmp_path / 'lm'
    args = ['--size', 'notebook', '--vocab-size', '300', '--epochs', '2', '--steps', '2', '--no-progress',
            '--out', str(out), '--text', *map(str, files)]
    summary = main(args)
    assert summary['epochs'] == 2 and 0 < summary['val_bits_per_byte'] < 9
    assert {'checkpoint.npz', 'tokenizer.json', 'curves.png', 'attention.png', 'summary.json'} <= \
        {p.name for p in out.iterdir()}
    assert json.loads((out / 'summary.json').read_text())['val_bits_per_byte'] == summary['val_bits_per_byte']
    again = main(args + ['--resume'])                        # finished: reports, trains no more
    assert again['val_bits_per_byte'] == summary['val_bits_per_byte']


def test_sample_token():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))
    rng = np.random.default_rng(0)
    draws = np.stack([sample_token(logits, top_k=3, top_p=0.7, generator=rng) for _ in range(300)])
    assert set(draws[:, 0]) == {0, 1} and set(draws[:, 1]) == {2, 3}
    assert (sample_token(logits, temperature=0) == [0, 3]).all()
    with pytest.raises(ValueError, match='top_k'):
        sample_token(logits, top_k=5)


@pytest.mark.torch
def test_top_p_against_transformers():
    torch = pytest.importorskip('torch')
    transformers = pytest.importorskip('transformers')
    scores = np.random.default_rng(0).normal(size=(8, 300)).astype(np.float32) * 2
    for top_p in (0.1, 0.5, 0.9, 0.99):
        warper = transformers.TopPLogitsWarper(top_p=top_p)
        theirs = warper(torch.zeros((8, 1), dtype=torch.long), torch.from_numpy(scores.copy())).numpy()
        np.testing.assert_array_equal(np.isfinite(top_p_filter(scores, top_p)), np.isfinite(theirs))
