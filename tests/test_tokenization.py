"""tinytorch.tokenization as a library: round trips, trainer equivalence, files, batching, error messages."""
import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tinytorch.tokenization import (BASE_VOCAB, BOS_ID, BYTE_OFFSET, EOS_ID, FORMAT_VERSION, PAD_ID, SPECIAL_TOKENS,
                                    UNK_ID, BPETokenizer, CharTokenizer, Tokenizer, WordTokenizer, bpe_encode_word,
                                    build_vocab, byte_ids, chunk_counts, merge_pair, pad_batch, pretokenize,
                                    synthetic_corpus, train_bpe, train_bpe_naive)

# Any Python str: every code point, lone surrogates included (st.text() leaves those out by default).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=60)
# Text from a few characters, so that pairs repeat and ties between counts are common.
small_text = st.text(st.sampled_from('ab c\u00e9\u0301\U0001F600.'), max_size=40)


@pytest.fixture(scope='module')
def corpus():
    return synthetic_corpus(60_000, seed=5)


@pytest.fixture(scope='module')
def bpe(corpus):
    return BPETokenizer().train(corpus, vocab_size=600)


# --- round trips

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=any_text)
def test_bpe_round_trip_any_text(bpe, s):
    ids = bpe.encode(s)
    assert bpe.decode(ids) == s
    assert all(BYTE_OFFSET <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(bpe.encode(s, add_bos=True, add_eos=True)) == s


@settings(max_examples=200, deadline=None)
@given(s=any_text)
def test_untrained_bpe_is_utf8(s):
    tok = BPETokenizer()
    assert tok.vocab_size == BASE_VOCAB
    assert tok.encode(s) == [b + BYTE_OFFSET for b in s.encode('utf-8', 'surrogatepass')]
    assert tok.decode(tok.encode(s)) == s


@settings(max_examples=200, deadline=None)
@given(s=any_text, extra=any_text)
def test_char_round_trip_any_text(s, extra):
    tok = CharTokenizer().train([s, extra, 'x'])
    assert tok.decode(tok.encode(s)) == s
    assert len(tok.encode(s)) == len(s)


@settings(max_examples=200, deadline=None)
@given(s=any_text)
def test_char_unknown_characters_become_unk(s):
    tok = CharTokenizer().train('abc')
    expected = ''.join(c if c in 'abc' else '<unk>' for c in s)
    assert tok.decode(tok.encode(s)) == expected


@settings(max_examples=300, deadline=None)
@given(s=any_text)
def test_pretokenize_covers_every_character(s):
    chunks = pretokenize(s)
    assert ''.join(chunks) == s
    assert all(chunks)


def test_round_trip_examples(bpe):
    for s in ["India is great", "", " ", "\n\n", "👩‍💻 and 👋🏽", "cafe\u0301 café", "नमस्ते", "你好，世界",
              "a\ud800b", "\udfff", "\x00\x01", "tab\there", "   leading and trailing   "]:
        assert bpe.decode(bpe.encode(s)) == s, repr(s)


def test_decode_of_a_partial_character_gives_the_replacement_character():
    tok = BPETokenizer()                          # bytes only: "😀" is four ids
    assert tok.decode(tok.encode("a😀")[:3]) == 'a\ufffd'
    assert tok.decode(tok.encode("😀b")[1:]) == '\ufffd' * 3 + 'b'


def test_special_ids_are_fixed():
    assert SPECIAL_TOKENS == ('<pad>', '<unk>', '<bos>', '<eos>')
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    for tok in (CharTokenizer().train('abc'), WordTokenizer().train('a b c'), BPETokenizer()):
        assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
        assert [tok.id_to_token(i) for i in range(4)] == list(SPECIAL_TOKENS)
        assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)


def test_specials_are_never_made_from_text(bpe):
    text = "<pad> <unk> <bos> <eos>"
    for tok in (CharTokenizer().train(text), WordTokenizer().train(text), bpe):
        assert not {PAD_ID, BOS_ID, EOS_ID} & set(tok.encode(text))
    assert bpe.decode(bpe.encode(text)) == text


def test_decode_skips_or_keeps_specials(bpe):
    ids = bpe.encode("hi", add_bos=True, add_eos=True) + [PAD_ID, PAD_ID]
    assert ids[0] == BOS_ID and ids[-3] == EOS_ID
    assert bpe.decode(ids) == "hi"
    assert bpe.decode(ids, skip_special=False) == "<bos>hi<eos><pad><pad>"
    assert bpe.decode(np.array(ids)) == "hi"


# --- vocabularies

def test_build_vocab_orders_by_count_then_token():
    counts = Counter({'b': 2, 'a': 2, 'c': 5, 'd': 1})
    assert build_vocab(counts) == list(SPECIAL_TOKENS) + ['c', 'a', 'b', 'd']
    assert build_vocab(counts, vocab_size=6) == list(SPECIAL_TOKENS) + ['c', 'a']
    assert build_vocab(counts, vocab_size=4) == list(SPECIAL_TOKENS)


def test_word_tokenizer_caps_by_frequency_and_uses_unk():
    tok = WordTokenizer().train(["India is great", "India is big", "India"], vocab_size=6)
    assert tok.tokens == list(SPECIAL_TOKENS) + ['India', 'is']
    assert tok.encode("India is great!") == [4, 5, UNK_ID, UNK_ID]
    assert tok.decode(tok.encode("India is great!")) == "India is <unk> <unk>"


def test_word_tokenizer_worked_example(corpus):
    tok = WordTokenizer().train(corpus)
    ids = tok.encode("India is great")
    assert len(ids) == 3 and UNK_ID not in ids
    assert [tok.id_to_token(i) for i in ids] == ["India", "is", "great"]


def test_char_tokenizer_cap():
    tok = CharTokenizer().train("aaabbc", vocab_size=6)
    assert tok.tokens == list(SPECIAL_TOKENS) + ['a', 'b']
    assert tok.encode("abc") == [4, 5, UNK_ID]


def test_token_to_id_and_id_to_token(bpe):
    assert bpe.id_to_token(BYTE_OFFSET + ord('a')) == b'a'
    assert bpe.token_to_id(b'a') == BYTE_OFFSET + ord('a')
    assert bpe.id_to_token(np.int64(BYTE_OFFSET)) == b'\x00'
    with pytest.raises(KeyError, match="not in the vocabulary"):
        bpe.token_to_id(b'\xff' * 40)
    with pytest.raises(ValueError, match=r"id 600 is outside the vocabulary \(size 600\)"):
        bpe.id_to_token(600)


# --- BPE training

def test_trainers_learn_identical_merges(corpus):
    words = chunk_counts(corpus)
    assert train_bpe_naive(words, 200) == train_bpe(words, 200)


@settings(max_examples=150, deadline=None)
@given(docs=st.lists(small_text, min_size=1, max_size=8), num_merges=st.integers(0, 30))
def test_trainers_agree_on_random_corpora(docs, num_merges):
    if not any(docs):
        return
    words = chunk_counts(docs)
    naive = train_bpe_naive(words, num_merges)
    assert train_bpe(words, num_merges) == naive
    assert len(naive) <= num_merges


@settings(max_examples=100, deadline=None)
@given(words=st.dictionaries(st.lists(st.integers(4, 7), max_size=8).map(tuple), st.integers(1, 5), max_size=6))
def test_trainers_agree_on_id_sequences(words):
    assert train_bpe(words, 20, first_id=8) == train_bpe_naive(words, 20, first_id=8)


def test_training_is_prefix_consistent(corpus):
    long = BPETokenizer().train(corpus, vocab_size=700).merges
    short = BPETokenizer().train(corpus, vocab_size=400).merges
    assert long[:len(short)] == short and len(short) == 400 - BASE_VOCAB


def test_merges_never_cross_chunks():
    tok = BPETokenizer().train(["ab ab ab ab. ab!"] * 3, vocab_size=300)
    for t in tok.tokens[BASE_VOCAB:]:
        text = t.decode('utf-8', 'replace')
        assert ''.join(pretokenize(text)) == text and len(pretokenize(text)) == 1, t


def test_training_stops_when_no_pair_is_left():
    tok = BPETokenizer().train("aaaa", vocab_size=1000)
    assert tok.merges == [(BYTE_OFFSET + 97,) * 2, (BASE_VOCAB, BASE_VOCAB)]
    assert tok.encode("aaaa") == [BASE_VOCAB + 1]


def test_encoding_reproduces_the_training_segmentation(corpus):
    words = chunk_counts(corpus)
    tok = BPETokenizer().train(corpus, vocab_size=500)
    segmented = dict(zip(words, words))
    for new_id, pair in enumerate(tok.merges, start=BASE_VOCAB):
        segmented = {w: merge_pair(s, pair, new_id) for w, s in segmented.items()}
    for w, s in segmented.items():
        assert bpe_encode_word(w, tok.ranks) == s


def test_tokens_are_concatenations_of_their_merge(bpe):
    for new_id, (a, b) in enumerate(bpe.merges, start=BASE_VOCAB):
        assert bpe.id_to_token(new_id) == bpe.id_to_token(a) + bpe.id_to_token(b)
        assert a < new_id and b < new_id


def test_bpe_compresses(bpe):
    text = synthetic_corpus(20_000, seed=123)
    assert len(text.encode()) / len(bpe.encode(text)) > 2.0


def test_cache_does_not_change_results(bpe):
    text = synthetic_corpus(5_000, seed=9)
    fresh = BPETokenizer(bpe.merges)
    assert fresh.encode(text) == bpe.encode(text) == fresh.encode(text)


def test_synthetic_corpus_is_deterministic():
    a, b = synthetic_corpus(10_000, seed=2), synthetic_corpus(10_000, seed=2)
    assert a == b and len(a) >= 10_000 and a != synthetic_corpus(10_000, seed=3)
    assert "India" in synthetic_corpus(100_000)


# --- files

@pytest.mark.parametrize('kind', ['char', 'word', 'bpe'])
def test_save_load_reproduces_encodings(kind, corpus, bpe, tmp_path):
    tok = {'char': CharTokenizer().train(corpus), 'word': WordTokenizer().train(corpus, 500), 'bpe': bpe}[kind]
    path = tmp_path / 'vocab.json'
    tok.save(path)
    for loader in (Tokenizer, type(tok)):
        again = loader.load(path)
        assert type(again) is type(tok) and again.tokens == tok.tokens
        text = corpus[:5000] + " Zanzibar 👩‍💻 \ud800"
        assert again.encode(text) == tok.encode(text)
        assert again.decode(again.encode(text)) == tok.decode(tok.encode(text))


def test_save_load_strange_characters(tmp_path):
    tok = CharTokenizer().train("a\ud800\"\\\n\u2028😀")
    tok.save(tmp_path / 'v.json')
    again = CharTokenizer.load(tmp_path / 'v.json')
    assert again.tokens == tok.tokens


def _write(path, obj):
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_load_errors(bpe, tmp_path):
    good = tmp_path / 'good.json'
    bpe.save(good)
    state = json.loads(good.read_text())
    cases = [
        (good.read_text()[:200], "is not valid JSON"),
        ('', "is not valid JSON"),
        ([1, 2], 'is not a tinytorch tokenizer file'),
        ({'merges': []}, 'is not a tinytorch tokenizer file'),
        (dict(state, version=7), "was written by format version 7, this tinytorch reads version 1"),
        (dict(state, version='1'), "format version '1'"),
        (dict(state, kind='SentencePiece'), "holds a 'SentencePiece' tokenizer"),
        (dict(state, merges=state['merges'] + [[5, 9999]]), "merge 340 is [5, 9999]"),
        (dict(state, merges=[[0, 5]]), "merge 0 is [0, 5]"),
        (dict(state, merges='oops'), '"merges" must be a list'),
        (dict(state, vocab_size=601), "says vocab_size 601 but holds 600 tokens"),
    ]
    for i, (content, message) in enumerate(cases):
        path = _write(tmp_path / f'bad{i}.json', content)
        with pytest.raises(ValueError, match=None) as err:
            Tokenizer.load(path)
        assert message in str(err.value) and str(path) in str(err.value), (message, str(err.value))
    (tmp_path / 'binary.json').write_bytes(b'\xff\xfe\x00')
    with pytest.raises(ValueError, match="not valid JSON"):
        Tokenizer.load(tmp_path / 'binary.json')


def test_load_errors_char_and_word(tmp_path):
    CharTokenizer().train("abc").save(tmp_path / 'c.json')
    state = json.loads((tmp_path / 'c.json').read_text())
    cases = [
        (dict(state, tokens=['a'] + state['tokens'][1:]), "the first tokens must be"),
        (dict(state, tokens=state['tokens'] + ['a'], vocab_size=8), "token 'a' appears twice"),
        (dict(state, tokens=state['tokens'] + ['ab'], vocab_size=8), "must be one character, got 'ab'"),
        (dict(state, tokens=state['tokens'] + [5], vocab_size=8), '"tokens" must be a list of strings'),
    ]
    for i, (content, message) in enumerate(cases):
        with pytest.raises(ValueError) as err:
            Tokenizer.load(_write(tmp_path / f'bad{i}.json', content))
        assert message in str(err.value), (message, str(err.value))
    with pytest.raises(ValueError, match="holds a 'CharTokenizer' tokenizer, not a BPETokenizer"):
        BPETokenizer.load(tmp_path / 'c.json')
    word = dict(state, kind='WordTokenizer', tokens=state['tokens'] + ['ab'], vocab_size=8)
    assert WordTokenizer.load(_write(tmp_path / 'w.json', word)).tokens[-1] == 'ab'


def test_file_format(bpe, tmp_path):
    bpe.save(tmp_path / 'v.json')
    state = json.loads((tmp_path / 'v.json').read_text())
    assert state['format'] == 'tinytorch.tokenizer' and state['version'] == FORMAT_VERSION == 1
    assert state['kind'] == 'BPETokenizer' and state['vocab_size'] == 600 and len(state['merges']) == 340


# --- bad input

@pytest.mark.parametrize('text', [123, None, b'India', ['India'], 1.5])
def test_encode_rejects_non_strings(bpe, text):
    for tok in (bpe, CharTokenizer().train('a'), WordTokenizer().train('a')):
        with pytest.raises(TypeError, match=f"text must be a str, got {type(text).__name__}"):
            tok.encode(text)


def test_encode_bytes_hint(bpe):
    with pytest.raises(TypeError, match="decode the bytes to a str first"):
        bpe.encode(b'India')


@pytest.mark.parametrize('ids, error, message', [
    ([5012], ValueError, r"decode: id 5012 is outside the vocabulary \(size 600\)"),
    ([5, -1], ValueError, r"decode: id -1 is outside the vocabulary \(size 600\)"),
    (np.array([7, 600]), ValueError, r"id 600 is outside the vocabulary"),
    ([5, 2.5], TypeError, r"ids must be integers, got float 2.5 at position 1"),
    ([5, '6'], TypeError, r"ids must be integers, got str '6' at position 1"),
    ([True], TypeError, r"got bool True at position 0"),
    (np.array([1.0, 2.0]), TypeError, r"ids must be integers, got an array of dtype float64"),
    (np.zeros((2, 3), dtype=np.int64), ValueError, r"expected one sequence of ids, got an array of shape \(2, 3\)"),
    ('abc', TypeError, r"ids must be a list or 1-D array of integers, got str"),
    (7, TypeError, r"ids must be a list or 1-D array of integers, got int: 7"),
])
def test_decode_rejects_bad_ids(bpe, ids, error, message):
    with pytest.raises(error, match=message):
        bpe.decode(ids)


def test_decode_accepts_numpy_integers(bpe):
    assert bpe.decode([np.int32(BYTE_OFFSET + 104), np.int64(BYTE_OFFSET + 105)]) == 'hi'
    assert bpe.decode(np.array([], dtype=np.float64)) == ''
    assert bpe.decode([]) == ''


def test_vocab_size_errors(corpus):
    with pytest.raises(ValueError, match=r"vocab_size 100 is below the base alphabet: 4 special tokens and 256 bytes need 260"):
        BPETokenizer().train(corpus, vocab_size=100)
    with pytest.raises(ValueError, match=r"vocab_size 259 is below the base alphabet"):
        BPETokenizer().train(corpus, vocab_size=259)
    assert BPETokenizer().train(corpus, vocab_size=260).merges == []
    for cls in (CharTokenizer, WordTokenizer):
        with pytest.raises(ValueError, match=r"vocab_size 3 is below the base alphabet: the 4 special tokens need 4"):
            cls().train(corpus, vocab_size=3)
    with pytest.raises(TypeError, match=r"vocab_size must be an int, got float: 500.0"):
        BPETokenizer().train(corpus, vocab_size=500.0)
    with pytest.raises(TypeError, match=r"vocab_size must be an int, got NoneType"):
        BPETokenizer().train(corpus, vocab_size=None)


@pytest.mark.parametrize('cls', [CharTokenizer, WordTokenizer, BPETokenizer])
def test_corpus_errors(cls):
    train = lambda c: cls().train(c, 300) if cls is BPETokenizer else cls().train(c)
    for empty, shown in [('', "''"), ([], r'\[\]'), (['', ''], r"\['', ''\]")]:
        with pytest.raises(ValueError, match=rf"the corpus is empty \(got {shown}\)"):
            train(empty)
    with pytest.raises(TypeError, match="corpus item 1 is int 5, expected str"):
        train(['ok', 5])
    with pytest.raises(TypeError, match="corpus must be a str or a list of str, got bytes"):
        train(b'bytes')
    with pytest.raises(TypeError, match="corpus must be a str or a list of str, got int"):
        train(42)


# --- batches

@settings(max_examples=200, deadline=None)
@given(seqs=st.lists(st.lists(st.integers(4, 999), max_size=12), min_size=1, max_size=6),
       max_len=st.one_of(st.none(), st.integers(0, 15)), bos=st.booleans(), eos=st.booleans())
def test_pad_batch_laws(seqs, max_len, bos, eos):
    full = [([BOS_ID] if bos else []) + s + ([EOS_ID] if eos else []) for s in seqs]
    ids, mask = pad_batch(seqs, max_len=max_len, truncate=True, bos_id=BOS_ID if bos else None,
                          eos_id=EOS_ID if eos else None)
    width = max(map(len, full)) if max_len is None else max_len
    assert ids.shape == mask.shape == (len(seqs), width)
    assert ids.dtype == np.int64 and mask.dtype == np.bool_
    for row, m, s in zip(ids, mask, full):
        n = min(len(s), width)
        assert list(row[:n]) == s[:n]
        assert not m[:n].any() and m[n:].all()
        assert (row[n:] == PAD_ID).all()


def test_pad_batch_decodes_back(bpe):
    texts = ["India is great", "I love AI", ""]
    ids, mask = pad_batch([bpe.encode(t) for t in texts], bos_id=BOS_ID, eos_id=EOS_ID)
    assert [bpe.decode(row) for row in ids] == texts
    assert (ids[mask] == PAD_ID).all()


def test_pad_batch_errors():
    with pytest.raises(ValueError, match=r"pad_batch: sequence 1 has 3 ids, more than max_len=2 \(pass truncate=True"):
        pad_batch([[5], [5, 6, 7]], max_len=2)
    with pytest.raises(ValueError, match="empty batch"):
        pad_batch([])
    with pytest.raises(TypeError, match="sequence 0 must be a 1-D sequence of integer ids"):
        pad_batch([[1.5, 2.0]])
    with pytest.raises(TypeError, match="sequence 1 must be a 1-D sequence of integer ids"):
        pad_batch([[1], [[1, 2]]])
    with pytest.raises(ValueError, match="max_len must be a non-negative int or None, got -1"):
        pad_batch([[1]], max_len=-1)


def test_pad_batch_pad_id_and_arrays():
    ids, mask = pad_batch([np.array([4, 5], dtype=np.int32), (6,)], pad_id=-1, max_len=3)
    assert ids.tolist() == [[4, 5, -1], [6, -1, -1]]
    assert mask.tolist() == [[False, False, True], [False, True, True]]


@pytest.mark.torch
def test_key_padding_mask_works_with_torch_attention():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ids, mask = pad_batch([[5, 6, 7], [8]])
    attn = torch.nn.MultiheadAttention(embed_dim=4, num_heads=1, batch_first=True)
    emb = torch.nn.Embedding(10, 4, padding_idx=PAD_ID)
    x = emb(torch.from_numpy(ids))
    out, weights = attn(x, x, x, key_padding_mask=torch.from_numpy(mask))
    assert torch.all(weights[1, :, 1:] == 0)         # nothing attends to the padding of sequence 1
    alone, _ = attn(x[1:, :1], x[1:, :1], x[1:, :1])
    assert torch.allclose(out[1, 0], alone[0, 0], atol=1e-6)


def test_constructor_needs_the_special_tokens():
    with pytest.raises(ValueError, match="starts with the special tokens"):
        CharTokenizer(['a', 'b'])
    assert CharTokenizer(list(SPECIAL_TOKENS) + ['a']).encode('ab') == [4, UNK_ID]
    assert BPETokenizer(BPETokenizer().train("abab abab", 262).merges).encode("abab") == [BASE_VOCAB + 1]
