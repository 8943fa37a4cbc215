"""Module 09's language model, full configuration (`make lm`): a training step, and generation with the KV cache.

The model is `lm_config(2048, 'full')`: a GPT with a 2048-token vocabulary, context 128, d_model 128, 4 heads,
4 pre-norm blocks, feed-forward 512 (ReLU), learned positions, an untied output projection, no dropout. The
PyTorch reference is the same network written with `torch.nn` (its attention is the fused
`scaled_dot_product_attention`), with our initial weights copied in, so both compute the same function.

- training step: what `fit` does per batch in `make lm` — zero the gradients, forward 16 windows of 128 tokens,
  cross-entropy, backward, clip the gradient norm to 1, Adam. Target: ours / torch <= 1.0.
- generation: a 16-token prompt continued by 112 greedy tokens, one at a time, with a key/value cache in both
  (ours: module 07's `generate`). Tokens per second = 112 / time; the ratio is of times (ours / torch).

- GPT-2 small generation (report only, not with --quick): `GPT(TransformerConfig.preset('gpt2-small'))` with
  random weights (the cost is the weights', not their values), a 16-token prompt and 32 greedy tokens with the
  KV cache; the time divided by 32 is the cost per token (the prompt's included). What `load_gpt2` gives costs this.

Both at one thread (`python -m bench` pins it).
"""
import numpy as np

from tinytorch.nn import manual_seed
from tinytorch.optim import Adam
from tinytorch.language_model import NextTokenModel, lm_config
from tinytorch.training import train_step
from tinytorch.transformer import GPT, TransformerConfig, generate

from .__main__ import torch_or_none
from .harness import Case

PROMPT, NEW = 16, 112


def _torch_gpt(torch, ours: GPT):
    nn, F = torch.nn, torch.nn.functional
    c = ours.config
    d, H, V, T = c.d_model, c.nhead, c.vocab_size, c.seq_len
    act = dict(relu=F.relu, gelu=F.gelu, gelu_tanh=lambda x: F.gelu(x, approximate='tanh'))[c.activation]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(d, eps=c.layer_norm_eps), nn.LayerNorm(d, eps=c.layer_norm_eps)
            self.in_proj, self.out_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.linear1, self.linear2 = nn.Linear(d, c.dim_feedforward), nn.Linear(c.dim_feedforward, d)

        def forward(self, x, past=None):
            B, t, _ = x.shape
            q, k, v = self.in_proj(self.norm1(x)).view(B, t, 3, H, d // H).permute(2, 0, 3, 1, 4)
            if past is not None:
                if past[0] is not None:
                    k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
                past[0], past[1] = k, v
            causal = past is None or k.shape[2] == t
            a = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            x = x + self.out_proj(a.transpose(1, 2).reshape(B, t, d))
            return x + self.linear2(act(self.linear1(self.norm2(x))))

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok_emb, self.pos_emb = nn.Embedding(V, d), nn.Embedding(T, d)
            self.blocks = nn.ModuleList([Block() for _ in range(c.num_decoder_layers)])
            self.ln_f, self.lm_head = nn.LayerNorm(d, eps=c.layer_norm_eps), nn.Linear(d, V, bias=False)

        def forward(self, idx, cache=None, offset=0):
            x = self.tok_emb(idx) + self.pos_emb.weight[offset:offset + idx.shape[1]]
            for i, block in enumerate(self.blocks):
                x = block(x, None if cache is None else cache[i])
            return self.lm_head(self.ln_f(x))

    ref = Reference()
    state = {k.replace('self_attn.in_proj_weight', 'in_proj.weight').replace('self_attn.in_proj_bias', 'in_proj.bias')
             .replace('self_attn.out_proj', 'out_proj'): torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()}
    ref.load_state_dict(state)
    return ref


def _training(torch, config, windows):
    manual_seed(0)
    ours = NextTokenModel(GPT(config)).train()
    optimizer = Adam(ours.parameters(), lr=config.learning_rate)
    prompt = np.zeros((len(windows), 0), dtype=np.int64)
    ours_step = lambda: train_step(ours, optimizer, prompt, windows, clip_grad_norm=1.0)
    if torch is None:
        return ours_step, None, {}
    ref = _torch_gpt(torch, ours.gpt).train()
    opt = torch.optim.Adam(ref.parameters(), lr=config.learning_rate)
    x, y = torch.from_numpy(windows[:, :-1]), torch.from_numpy(windows[:, 1:]).reshape(-1)
    with torch.no_grad():
        diff = float((ref(x) - torch.from_numpy(ours.gpt(windows[:, :-1]).data)).abs().max())

    def ref_step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(ref(x).reshape(-1, config.vocab_size), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()
        return loss.item()
    return ours_step, ref_step, dict(max_logit_difference=diff)


def _generation(torch, config, prompt):
    manual_seed(0)
    ours = GPT(config).eval()
    ours_run = lambda: generate(ours, prompt, NEW, temperature=0)
    if torch is None:
        return ours_run, None, {}
    ref = _torch_gpt(torch, ours).eval()

    def ref_run():
        with torch.no_grad():
            idx = torch.from_numpy(prompt)
            cache = [[None, None] for _ in ref.blocks]
            logits, offset = ref(idx, cache), 0
            out = [idx]
            for step in range(NEW):
                token = logits[:, -1].argmax(dim=-1, keepdim=True)
                out.append(token)
                offset += logits.shape[1]
                if step + 1 < NEW:
                    logits = ref(token, cache, offset)
            return torch.cat(out, dim=1).numpy()
    same = bool((ours_run() == ref_run()).all())
    return ours_run, ref_run, dict(same_tokens=same)


def cases(quick: bool) -> list:
    config = lm_config(2048, 'full')
    torch = torch_or_none()
    rng = np.random.default_rng(0)
    windows = rng.integers(4, config.vocab_size, (config.batch_size, config.seq_len + 1))
    ours, ref, extra = _training(torch, config, windows)
    shape = f'B={config.batch_size} T={config.seq_len} d={config.d_model} L={config.num_decoder_layers} V=2048'
    rows = [Case(group='LM training step (09 full)', name=shape + ' Adam', ours=ours, ref=ref, target=1.0,
                 number=1 if quick else 2, extra=dict(parameters=config.num_parameters(), **extra))]
    ours, ref, extra = _generation(torch, config, rng.integers(4, config.vocab_size, (1, PROMPT)))
    rows.append(Case(group='LM generation, KV cache', name=f'{PROMPT}+{NEW} tokens, greedy, batch 1', ours=ours,
                     ref=ref, number=1, repeats=3 if quick else 7, extra=dict(new_tokens=NEW, **extra)))
    if not quick:
        manual_seed(0)
        gpt2 = GPT(TransformerConfig.preset('gpt2-small', dropout=0.0)).eval()
        prompt = rng.integers(0, gpt2.config.vocab_size, (1, PROMPT))
        rows.append(Case(group='GPT-2 small generation', name=f'{PROMPT}+32 tokens, greedy, KV cache',
                         ours=lambda: generate(gpt2, prompt, 32, temperature=0), number=1, repeats=3,
                         extra=dict(parameters=gpt2.config.num_parameters(), new_tokens=32)))
    return rows
