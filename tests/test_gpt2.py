"""`load_gpt2`: Hugging Face GPT-2 weights in our GPT. Against `transformers.GPT2LMHeadModel` when it is installed."""
import numpy as np
import pytest

from tinytorch.nn import manual_seed
from tinytorch.transformer import GPT, TransformerConfig, generate, load_gpt2

HF_NAMES = (('self_attn.in_proj_', 'attn.c_attn.'), ('self_attn.out_proj.', 'attn.c_proj.'), ('linear1.', 'mlp.c_fc.'),
            ('linear2.', 'mlp.c_proj.'), ('norm1.', 'ln_1.'), ('norm2.', 'ln_2.'))


def _as_hf(model: GPT, prefix: str = 'transformer.') -> dict:
    "Our GPT's state in Hugging Face GPT-2's names and Conv1D layout (written independently of load_gpt2's mapping)."
    s = model.state_dict()
    out = {prefix + 'wte.weight': s['tok_emb.weight'], prefix + 'wpe.weight': s['pos_emb.weight'],
           prefix + 'ln_f.weight': s['ln_f.weight'], prefix + 'ln_f.bias': s['ln_f.bias']}
    for i in range(model.config.num_decoder_layers):
        for ours, theirs in HF_NAMES:
            w = s[f'blocks.{i}.{ours}weight']
            out[f'{prefix}h.{i}.{theirs}weight'] = w.T.copy() if w.ndim == 2 else w
            out[f'{prefix}h.{i}.{theirs}bias'] = s[f'blocks.{i}.{ours}bias']
    return out


def _small_gpt(seed=0):
    manual_seed(seed)
    model = GPT(TransformerConfig(vocab_size=61, seq_len=24, d_model=32, nhead=4, num_encoder_layers=0,
                                  num_decoder_layers=3, dim_feedforward=96, dropout=0.0, activation='gelu',
                                  norm_first=True, positional='learned', tie_weights=True))
    for p in model.parameters():        # biases and LayerNorms away from their 0/1 init, so a swap would show
        p.data[...] += np.random.default_rng(seed).normal(0, 0.05, p.shape).astype(np.float32)
    return model.eval()


@pytest.mark.parametrize('prefix', ['transformer.', ''])       # save_pretrained's names, and the hub file's
def test_dict_round_trip(prefix):
    ours = _small_gpt()
    loaded = load_gpt2(_as_hf(ours, prefix), nhead=4, activation='gelu')
    assert loaded.config.model_fields() == ours.config.model_fields()
    ids = np.random.default_rng(1).integers(0, 61, (2, 24))
    np.testing.assert_allclose(loaded(ids).data, ours(ids).data, atol=1e-6)
    assert loaded.lm_head.weight is loaded.tok_emb.weight


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='config.json'):
        load_gpt2(tmp_path)
    with pytest.raises(KeyError, match='it needs wte.weight and wpe.weight, and has h.0.ln_1.weight'):
        load_gpt2({'h.0.ln_1.weight': np.ones(4)})
    with pytest.raises(TypeError, match='a checkpoint directory .* or a dict of arrays, got int'):
        load_gpt2(42)
    state = _as_hf(_small_gpt())
    del state['transformer.h.1.mlp.c_fc.bias']
    with pytest.raises(KeyError, match=r'1 of its 40 arrays are missing, h.1.mlp.c_fc.bias'):
        load_gpt2(state, nhead=4, activation='gelu')
    state = _as_hf(_small_gpt())
    state['transformer.h.5.ln_1.weight'] = np.ones(32)            # layers 3 and 4 missing: a gap
    with pytest.raises(KeyError, match=r'35 of its 76 arrays are missing, h.3.ln_1.weight'):
        load_gpt2(state, nhead=4, activation='gelu')
    state = {k: v for k, v in _as_hf(_small_gpt()).items() if '.h.0.' not in k}   # no first layer at all
    with pytest.raises(KeyError, match=r'12 of its 40 arrays are missing, h.0.ln_1.weight'):
        load_gpt2(state, nhead=4, activation='gelu')
    (tmp_path / 'config.json').write_text('{"n_head": 4,')
    (tmp_path / 'model.safetensors').write_bytes(b'not a safetensors file')
    with pytest.raises(ValueError, match='config.json is not valid JSON'):
        load_gpt2(tmp_path)
    (tmp_path / 'config.json').write_text('{"n_head": 4}')
    pytest.importorskip('safetensors')
    with pytest.raises(ValueError, match='model.safetensors is not a readable safetensors file'):
        load_gpt2(tmp_path)


def _hf_pair(tmp_path, activation):
    torch = pytest.importorskip('torch')
    transformers = pytest.importorskip('transformers')
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=97, n_positions=40, n_embd=48, n_layer=2, n_head=4,
                                     activation_function=activation, bos_token_id=None, eos_token_id=None, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():                # random LayerNorms and biases too (they start at 1 and 0)
        for name, p in hf.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    return torch, hf, load_gpt2(tmp_path)


@pytest.mark.torch
@pytest.mark.parametrize('activation', ['gelu_new', 'gelu'])
def test_against_transformers(tmp_path, activation):
    torch, hf, ours = _hf_pair(tmp_path, activation)
    assert ours.config.activation == ('gelu_tanh' if activation == 'gelu_new' else 'gelu')
    ids = np.random.default_rng(0).integers(0, 97, (3, 40))
    with torch.no_grad():
        expected = hf(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(ours(ids).data, expected, atol=1e-4, rtol=0)
    prompt = ids[:, :7]
    with torch.no_grad():
        greedy = hf.generate(torch.from_numpy(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                             do_sample=False, max_new_tokens=25, pad_token_id=0).numpy()
    np.testing.assert_array_equal(generate(ours, prompt, 25, temperature=0), greedy)
