"""One training step of the guide's configuration: ours against PyTorch's `nn.Transformer`, one thread.

Both models are the same sequence-to-sequence transformer with the guide's hyperparameters (vocabulary 20,
d_model 128, 8 heads, 3 + 3 layers, feed-forward 512, dropout 0.1): token embeddings scaled by sqrt(d_model),
sinusoidal positions, the encoder-decoder transformer (post-norm, ReLU), and a linear projection to the
vocabulary. A step is what `fit` does per batch: zero the gradients, forward a batch of 64 reversal pairs
(source length 10; the decoder reads BOS + 10 tokens under a causal mask), cross-entropy, backward, Adam
(lr 1e-4). Dropout is on (training mode) in both. Target: ours / torch <= 1.0.

The row's name also reports the wall time of the last `make demo` run (read from its summary file, not re-run
here: the demo trains for minutes); the JSON has the whole summary.
"""
import json
import math
from pathlib import Path

import numpy as np

from tinytorch.nn import manual_seed
from tinytorch.optim import Adam
from tinytorch.training import reversal_pairs, train_step
from tinytorch.transformer import Seq2SeqTransformer, TransformerConfig

from .__main__ import torch_or_none
from .harness import Case

DEMO_SUMMARY = Path(__file__).resolve().parent.parent / 'artifacts' / 'demo' / 'summary.json'


def _ours(config: TransformerConfig, src: np.ndarray, tgt: np.ndarray):
    manual_seed(0)
    model = Seq2SeqTransformer(config).train()
    optimizer = Adam(model.parameters(), lr=config.learning_rate)
    return lambda: train_step(model, optimizer, src, tgt)


def _torch(torch, config: TransformerConfig, src: np.ndarray, tgt: np.ndarray):
    nn = torch.nn
    torch.manual_seed(0)
    d, V = config.d_model, config.vocab_size

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.src_tok_emb = nn.Embedding(V, d, padding_idx=config.padding_idx)
            self.tgt_tok_emb = nn.Embedding(V, d, padding_idx=config.padding_idx)
            pos = torch.arange(config.seq_len + 1, dtype=torch.float32)[:, None]
            freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
            pe = torch.zeros(config.seq_len + 1, d)
            pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
            self.register_buffer('pe', pe)
            self.dropout = nn.Dropout(config.dropout)
            self.transformer = nn.Transformer(d, config.nhead, config.num_encoder_layers, config.num_decoder_layers,
                                              config.dim_feedforward, config.dropout, batch_first=True)
            self.generator = nn.Linear(d, V)

        def embed(self, emb, ids):
            return self.dropout(emb(ids) * math.sqrt(d) + self.pe[:ids.shape[1]])

        def forward(self, src, tgt):
            mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
            out = self.transformer(self.embed(self.src_tok_emb, src), self.embed(self.tgt_tok_emb, tgt), tgt_mask=mask)
            return self.generator(out)

    model = Reference().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    s, t = torch.from_numpy(src), torch.from_numpy(tgt)
    t_in, t_out = t[:, :-1], t[:, 1:].reshape(-1)

    def step():
        optimizer.zero_grad()
        logits = model(s, t_in)
        loss = nn.functional.cross_entropy(logits.reshape(-1, V), t_out, ignore_index=config.padding_idx)
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


def cases(quick: bool) -> list:
    config = TransformerConfig()
    src, tgt = reversal_pairs(config.batch_size, config.seq_len, config.vocab_size, seed=0)
    torch = torch_or_none()
    name, extra = f'B={config.batch_size} T={config.seq_len} p={config.dropout} Adam', {}
    if DEMO_SUMMARY.exists():
        demo = json.loads(DEMO_SUMMARY.read_text())
        name += f" (make demo: {demo['wall_seconds']:.0f} s)"
        extra = dict(demo_wall_seconds=demo['wall_seconds'], demo=demo)
    return [Case(group='training step (guide config)', name=name, ours=_ours(config, src, tgt),
                 ref=_torch(torch, config, src, tgt) if torch else None, target=1.0, number=2 if quick else 3,
                 extra=dict(parameters=config.num_parameters(), **extra))]
