"""BPE training and encoding: the incremental trainer against the naive one written in the notebook.

Training: `BPETokenizer.train` on ~1 MB of `synthetic_corpus` text to a 2,000-token vocabulary, with the incremental
trainer (`train_bpe`, ours) and with `train_bpe_naive` (ref, which recounts every pair after every merge). Both
include the same pretokenization and chunk counting. Every run checks that the two learned identical merges.
Target: the incremental trainer at least 20x faster (ours/ref <= 0.05).

Encoding: `BPETokenizer.encode` of ~1 MB of held-out text, starting with an empty chunk cache (ours), against
encoding every chunk with `bpe_encode_word` and no cache (ref). Throughput in MB/s is in the JSON (`extra`).
"""
from tinytorch.tokenization import (BPETokenizer, bpe_encode_word, byte_ids, pretokenize, synthetic_corpus,
                                    train_bpe, train_bpe_naive)

import statistics
import time

from .harness import Case


def _throughput(fn, mb: float, extra: dict, key: str):
    "`fn`, also recording its median throughput over all calls as `extra[key]` (MB/s)."
    seconds = []
    def run():
        t0 = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - t0)
        extra[key] = round(mb / statistics.median(seconds), 3)
        return out
    return run


def _training(corpus: str, vocab_size: int, trainer, learned: dict, name: str):
    "A callable that trains with `trainer` and checks its merges against the other trainer's."
    def run():
        merges = BPETokenizer().train(corpus, vocab_size, trainer=trainer).merges
        learned[name] = merges
        if len(learned) == 2 and learned['incremental'] != learned['naive']:
            first = next(r for r, (a, b) in enumerate(zip(learned['incremental'], learned['naive'])) if a != b)
            raise AssertionError(f"the trainers learned different merges (first difference at merge {first})")
        return merges
    return run


def cases(quick: bool) -> list:
    n_chars, vocab_size = (200_000, 600) if quick else (1_000_000, 2000)
    corpus = synthetic_corpus(n_chars, seed=1)
    mb = len(corpus.encode()) / 1e6
    learned = {}
    train_case = Case(
        group='bpe train (ref: naive)', name=f'{mb:.1f} MB -> vocab {vocab_size}',
        ours=_training(corpus, vocab_size, train_bpe, learned, 'incremental'),
        ref=_training(corpus, vocab_size, train_bpe_naive, learned, 'naive'),
        ref_name='naive', target=0.05, number=1, repeats=3, extra=dict(corpus_mb=mb))  # naive: ~45 s a run

    merges = BPETokenizer().train(corpus, vocab_size).merges
    text = synthetic_corpus(n_chars, seed=2)                       # held out
    text_mb = len(text.encode()) / 1e6
    ranks = BPETokenizer(merges).ranks
    ours = lambda: BPETokenizer(merges).encode(text)               # a fresh tokenizer: an empty cache
    ref = lambda: [i for chunk in pretokenize(text) for i in bpe_encode_word(byte_ids(chunk), ranks)]
    assert ours() == ref()
    extra = dict(text_mb=text_mb)
    encode_case = Case(
        group='bpe encode (ref: no cache)', name=f'{text_mb:.1f} MB, vocab {vocab_size}',
        ours=_throughput(ours, text_mb, extra, 'ours_mb_per_s'), ref=_throughput(ref, text_mb, extra, 'ref_mb_per_s'),
        ref_name='naive', number=1, repeats=5, extra=extra)
    return [train_case, encode_case]
