"""Module 09 as a library: resuming training exactly, the command on your own text, sampling against transformers."""
import json

import numpy as np
import pytest

from tinytorch.nn import manual_seed
from tinytorch.tokenization import BPETokenizer, synthetic_corpus
from tinytorch.transformer import GPT
from tinytorch.language_model import (NextTokenModel, accumulation_step, bits_per_byte, complete, encode_texts,
                                      lm_config, main, read_texts, sample_token, split_text, token_windows,
                                      top_p_filter, train_language_model)
from tinytorch.optim import Adam


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


def test_read_texts_names_the_file_that_is_wrong(tmp_path):
    (tmp_path / 'ok.txt').write_text('some text\n')
    (tmp_path / 'empty.txt').write_text('  \n')
    (tmp_path / 'bytes.bin').write_bytes(bytes([0x9d, 0xff, 0x00]) * 10)
    assert read_texts([tmp_path / 'ok.txt']) == {str(tmp_path / 'ok.txt'): 'some text\n'}
    with pytest.raises(FileNotFoundError, match='no text file at .*missing.txt'):
        read_texts([tmp_path / 'ok.txt', tmp_path / 'missing.txt'])
    with pytest.raises(ValueError, match=r'empty.txt is empty'):
        read_texts([tmp_path / 'empty.txt'])
    with pytest.raises(ValueError, match=r'bytes.bin is not UTF-8 text \(byte 0x9d at offset 0\)'):
        read_texts([tmp_path / 'bytes.bin'])


def test_split_text_holds_out_the_last_lines():
    text = ''.join(f'line {i}\n' for i in range(100))
    train, val = split_text(text)
    assert train + val == text and train.endswith('\n') and val.startswith('line ')
    assert 0.08 < len(val) / len(text) < 0.12
    train, val = split_text('no newline at all ' * 10, held_out=0.5)
    assert len(train) == 90 and len(val) == 90
    with pytest.raises(ValueError, match='between 0 and 1, got 1.0'):
        split_text(text, held_out=1.0)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match='num_bytes >= 1, got num_tokens=10, num_bytes=0'):
        bits_per_byte(1.0, 10, 0)
    with pytest.raises(ValueError, match='num_tokens=-1'):
        bits_per_byte(1.0, -1, 10)
    tok, _, _ = _data()
    gpt = _model(tok).gpt
    with pytest.raises(ValueError, match='max_new_tokens must be an integer >= 0, got -1'):
        complete(gpt, tok, 'def', -1)
    assert complete(gpt, tok, 'def', 0) == 'def'
    opt = Adam(gpt.parameters())
    with pytest.raises(ValueError, match=r'shape \(batch, T \+ 1\) with T >= 1, got int64 of shape \(17,\)'):
        accumulation_step(gpt, opt, np.zeros(17, dtype=np.int64), 1)
    with pytest.raises(ValueError, match='got float64 of shape'):
        accumulation_step(gpt, opt, np.zeros((4, 17)), 1)


def _bad(args, capsys) -> str:
    "The command's message for bad input: argparse's exit status 2 and a line on stderr, not a traceback."
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_command_line_says_what_is_wrong(tmp_path, capsys):
    text = tmp_path / 'text.txt'
    text.write_text(synthetic_corpus(6000, seed=0))
    (tmp_path / 'short.txt').write_text('x = 1\n')
    base = ['--size', 'notebook', '--vocab-size', '300', '--steps', '2', '--no-progress', '--out', str(tmp_path / 'o')]
    assert 'argument --epochs: expected a whole number of at least 1, got 0' in _bad(base + ['--epochs', '0'], capsys)
    assert "argument --steps: expected a whole number of at least 1, got 'two'" in _bad(base + ['--steps', 'two'],
                                                                                         capsys)
    assert 'no text file at' in _bad(base + ['--text', str(tmp_path / 'nope.txt')], capsys)
    msg = _bad(base + ['--text', str(text), str(tmp_path / 'short.txt')], capsys)
    assert 'the validation text' in msg and 'short.txt' in msg and "windows need 65" in msg
    assert 'vocab_size 100 is below' in _bad(base + ['--vocab-size', '100', '--text', str(text)], capsys)
    (tmp_path / 'file').write_text('')
    assert '--out' in _bad(base[:-2] + ['--out', str(tmp_path / 'file' / 'sub'), '--text', str(text)], capsys)


@pytest.mark.slow
def test_one_text_file_is_split_and_resume_checks_the_run(tmp_path, capsys):
    text = tmp_path / 'text.txt'
    text.write_text(synthetic_corpus(20000, seed=1))
    out = tmp_path / 'o'
    args = ['--size', 'notebook', '--vocab-size', '300', '--steps', '2', '--epochs', '1', '--no-progress',
            '--out', str(out), '--text', str(text)]
    main(args)
    assert list(json.loads((out / 'run.json').read_text())['texts']) == [f'{text} (first 90%)', f'{text} (last 10%)']
    assert "size 'notebook' then, 'full' now" in _bad(args + ['--resume', '--size', 'full'], capsys)
    text.write_text(synthetic_corpus(20000, seed=2))
    assert 'the same text files, with other contents' in _bad(args + ['--resume'], capsys)
    text.write_text(synthetic_corpus(20000, seed=1))
    assert main(args[:7] + ['2'] + args[8:] + ['--resume'])['epochs'] == 2     # more epochs: fine


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
