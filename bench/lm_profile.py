"""`python -m bench.lm_profile [--steps N] [--clock user|cpu] [--torch] [--products] [--floor]`: where module 09's step spends its time.

The step is `bench_lm`'s (model `lm_config(2048, 'full')`, 16 windows of 128 tokens, cross-entropy, backward, clipping,
Adam), one BLAS thread. Every `Function` class is timed on its own, forward and backward, plus the optimiser, the
gradient clipping and `zero_grad`; the table gives milliseconds per step and calls per step. `--clock user` (the
default) counts this process's user CPU time only: on a shared machine it leaves out waiting for a core and the
kernel's page-fault work, which moves with the allocator's state rather than with our code. `--torch` adds
PyTorch's profile of the same network (`bench_lm`'s reference), its operators by self CPU time. `--products`
replays the step's matrix products alone, in NumPy and in PyTorch: what the step costs before any elementwise work.
`--floor` replays the step's elementwise passes alone, one NumPy call each into preallocated arrays, as they are and
cache-blocked: the least that NumPy's one-pass-per-operation costs on top of the products.
A profiler, not a benchmark: the instrumentation costs a few percent; `python -m bench --only lm` gives the ratio.
"""
import os

for var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ[var] = '1'

import argparse, collections, resource, time  # noqa: E402

import numpy as np  # noqa: E402

from tinytorch import tensor, training  # noqa: E402
from tinytorch.language_model import NextTokenModel, lm_config  # noqa: E402
from tinytorch.nn import manual_seed  # noqa: E402
from tinytorch.optim import Adam  # noqa: E402
from tinytorch.transformer import GPT  # noqa: E402

from . import bench_lm  # noqa: E402
from .__main__ import torch_or_none  # noqa: E402

CLOCKS = dict(user=lambda: resource.getrusage(resource.RUSAGE_SELF).ru_utime, cpu=time.process_time)


def _functions():
    "Every Function subclass defined so far (the package's operations), transitively."
    out, todo = [], [tensor.Function]
    while todo:
        for cls in todo.pop().__subclasses__():
            out.append(cls)
            todo.append(cls)
    return out


def profile(steps: int = 20, clock: str = 'user') -> dict:
    "Milliseconds per step of each Function's forward and backward, and of the optimiser; the step's total."
    now = CLOCKS[clock]
    config = lm_config(2048, 'full')
    windows = np.random.default_rng(0).integers(4, config.vocab_size, (config.batch_size, config.seq_len + 1))
    manual_seed(0)
    model = NextTokenModel(GPT(config)).train()
    optimizer = Adam(model.parameters(), lr=config.learning_rate)
    prompt = np.zeros((len(windows), 0), dtype=np.int64)
    step = lambda: training.train_step(model, optimizer, prompt, windows, clip_grad_norm=1.0)   # bench_lm's step
    for _ in range(3):
        step()
    t0 = now()
    for _ in range(steps):
        step()
    plain = (now() - t0) / steps

    times, calls = collections.Counter(), collections.Counter()
    apply, patched = tensor.Function.apply.__func__, []

    def timed_apply(cls, *args, **kwargs):
        t = now()
        out = apply(cls, *args, **kwargs)
        times[cls.__name__, 'forward'] += now() - t
        calls[cls.__name__] += 1
        return out

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            t = now()
            out = fn(*args, **kwargs)
            times[key] += now() - t
            return out
        return wrapper

    tensor.Function.apply = classmethod(timed_apply)
    for cls in _functions():
        if 'backward' in vars(cls):
            patched.append((cls, vars(cls)['backward']))
            cls.backward = staticmethod(timed(vars(cls)['backward'].__func__, (cls.__name__, 'backward')))
    originals = [(optimizer, 'step', optimizer.step), (optimizer, 'zero_grad', optimizer.zero_grad),
                 (training, 'clip_grad_norm_', training.clip_grad_norm_)]
    optimizer.step = timed(optimizer.step, ('Adam', 'step'))
    optimizer.zero_grad = timed(optimizer.zero_grad, ('zero_grad', ''))
    training.clip_grad_norm_ = timed(training.clip_grad_norm_, ('clip_grad_norm_', ''))
    try:
        t0 = now()
        for _ in range(steps):
            step()
        instrumented = (now() - t0) / steps
    finally:
        tensor.Function.apply = classmethod(apply)
        for cls, backward in patched:
            cls.backward = backward
        for obj, name, fn in originals:
            if obj is optimizer:
                delattr(obj, name)
            else:
                setattr(obj, name, fn)
    rows = {key: 1e3 * t / steps for key, t in times.items()}
    return dict(step_ms=1e3 * plain, instrumented_ms=1e3 * instrumented, rows=rows,
                calls={k: v // steps for k, v in calls.items()}, clock=clock, steps=steps)


def torch_profile(steps: int = 10, top: int = 15):
    "PyTorch's profile of the reference step: its operators by self CPU time, in ms per step."
    torch = torch_or_none()
    if torch is None:
        return None
    from torch.profiler import ProfilerActivity, profile as tprofile
    config = lm_config(2048, 'full')
    windows = np.random.default_rng(0).integers(4, config.vocab_size, (config.batch_size, config.seq_len + 1))
    ref = bench_lm._training(torch, config, windows)[1]
    for _ in range(3):
        ref()
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            ref()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    return [(e.key, e.self_cpu_time_total / 1e3 / steps, e.count // steps) for e in events]


def products(repeats: int = 11):
    """Every matrix product of one step (fused QKV, causal attention in two row blocks of 64 keys and 128), replayed
    back to back in NumPy and in PyTorch: the floor under the step that no elementwise work can lower. Median ms."""
    rng = np.random.default_rng(0)
    config = lm_config(2048, 'full')
    N, d, f, V = config.batch_size * config.seq_len, config.d_model, config.dim_feedforward, config.vocab_size
    B, H, dh = config.batch_size, config.nhead, config.head_dim
    ops = []

    def mm(a_shape, b_shape, ta=False, tb=False):
        ops.append((rng.standard_normal(a_shape).astype(np.float32), rng.standard_normal(b_shape).astype(np.float32),
                    ta, tb))
    for _ in range(config.num_decoder_layers):
        mm((N, d), (3 * d, d), tb=True); mm((N, d), (d, d), tb=True)                        # in_proj, out_proj
        mm((N, d), (f, d), tb=True); mm((N, f), (d, f), tb=True)                            # linear1, linear2
        mm((N, 3 * d), (3 * d, d)); mm((N, 3 * d), (N, d), ta=True)                         # their gradients
        mm((N, d), (d, d)); mm((N, d), (N, d), ta=True)
        mm((N, d), (d, f)); mm((N, d), (N, f), ta=True); mm((N, f), (f, d)); mm((N, f), (N, d), ta=True)
        for rows, keys in ((64, 64), (64, 128)):                                             # attention blocks
            q, k, s = (B, H, rows, dh), (B, H, keys, dh), (B, H, rows, keys)
            mm(q, k, tb=True); mm(s, k)                                                      # Q K^T, P V
            mm(s, q, ta=True); mm(q, k, tb=True); mm(s, k); mm(s, q, ta=True)                # dV, dP, dQ, dK
    mm((N, d), (V, d), tb=True); mm((N, V), (V, d)); mm((N, V), (N, d), ta=True)            # lm_head
    now = CLOCKS['user']

    def run(matmul, pairs):
        t = now()
        for a, b, ta, tb in pairs:
            matmul(a.swapaxes(-1, -2) if ta else a, b.swapaxes(-1, -2) if tb else b)
        return 1e3 * (now() - t)
    out = dict(products=len(ops), numpy=sorted(run(np.matmul, ops) for _ in range(repeats))[repeats // 2])
    torch = torch_or_none()
    if torch is not None:
        pairs = [(torch.from_numpy(a), torch.from_numpy(b), ta, tb) for a, b, ta, tb in ops]
        swap = lambda t, yes: t.transpose(-1, -2) if yes else t
        tops = [(swap(a, ta), swap(b, tb), False, False) for a, b, ta, tb in pairs]
        out['torch'] = sorted(run(torch.matmul, tops) for _ in range(repeats))[repeats // 2]
    return out


def passes(repeats: int = 11, chunks: int = 1):
    """The elementwise work of one step at its NumPy minimum: every pass the step's arithmetic needs (the LayerNorms,
    biases, ReLU, residual adds, the causal softmax, cross-entropy, Adam and clipping, forward and backward), each one
    NumPy call writing into a preallocated array, with no copies, no allocation and no autograd. Each layer has its own
    arrays, as in the step. Median ms (user time); what the step costs on top of `products`, at the very least.
    `chunks` = k replays every pass k times on 1/k of the rows (and of Adam's numbers) in arrays reused by all k:
    what cache blocking could reach at best, the data staying in the CPU's cache from one pass to the next."""
    rng = np.random.default_rng(0)
    config = lm_config(2048, 'full')
    N, d, f, V = config.batch_size * config.seq_len // chunks, config.d_model, config.dim_feedforward, config.vocab_size
    B, H = config.batch_size // chunks, config.nhead
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    ops = []

    def layer_norm():
        x, y, xhat, g, w = f32(N, d), f32(N, d), f32(N, d), f32(N, d), f32(d)
        mean_w, r, gw, ones_n = np.full(d, 1 / d, np.float32), f32(N), f32(d), np.ones(N, np.float32)
        ops.extend([lambda: np.matmul(x, mean_w, out=r), lambda: np.subtract(x, r[:, None], out=xhat),
                    lambda: np.einsum('ij,ij->i', xhat, xhat, out=r), lambda: np.multiply(xhat, r[:, None], out=xhat),
                    lambda: np.multiply(xhat, w, out=y), lambda: np.add(y, w, out=y)])              # forward: 6
        ops.extend([lambda: np.einsum('ij,ij->j', g, xhat, out=gw), lambda: np.matmul(ones_n, g, out=gw),
                    lambda: np.multiply(g, w, out=y), lambda: np.matmul(y, mean_w, out=r),
                    lambda: np.subtract(y, r[:, None], out=y), lambda: np.einsum('ij,ij->i', g, xhat, out=r),
                    lambda: np.multiply(xhat, r[:, None], out=g), lambda: np.subtract(y, g, out=y),
                    lambda: np.multiply(y, r[:, None], out=y)])                                      # backward: 9

    def bias(rows, cols):
        a, b, ones_n = f32(rows, cols), f32(cols), np.ones(rows, np.float32)
        ops.extend([lambda: np.add(a, b, out=a), lambda: np.matmul(ones_n, a, out=b)])   # add; its gradient's sum

    def add(shape):
        a, b = f32(*shape), f32(*shape)
        ops.append(lambda: np.add(a, b, out=a))

    for _ in range(config.num_decoder_layers):
        layer_norm(), layer_norm()
        bias(N, 3 * d), bias(N, d), bias(N, f), bias(N, d)                         # in_proj, out_proj, linear1/2
        add((N, d)), add((N, d)), add((N, d)), add((N, d))                         # residuals, their gradients
        h, mask = f32(N, f), np.empty((N, f), bool)
        ops.extend([lambda h=h: np.maximum(h, 0, out=h), lambda h=h, m=mask: np.greater(h, 0, out=m),
                    lambda h=h, m=mask: np.multiply(h, m, out=h)])                 # ReLU, its mask, its backward
        o, do, delta = f32(B, H, 128, 32), f32(B, H, 128, 32), f32(B, H, 128, 1)
        ops.extend([lambda o=o, do=do, r=delta: np.einsum('bhld,bhld->bhl', o, do, out=r[..., 0]),
                    lambda o=o, r=delta: np.multiply(o, r, out=o)])                # delta; normalising the output
        for rows, keys in ((64, 64), (64, 128)):                                   # the causal blocks
            s, p, m, ones_k = f32(B, H, rows, keys), f32(B, H, rows, keys), f32(B, H, rows, 1), np.ones(keys, np.float32)
            mask = np.where(np.triu(np.ones((rows, keys), bool), keys - rows + 1), -np.inf, 0).astype(np.float32)
            ops.extend([lambda s=s, k=mask: np.add(s, k, out=s), lambda s=s, m=m: np.max(s, axis=-1, keepdims=True, out=m),
                        lambda s=s, m=m: np.subtract(s, m, out=s), lambda s=s: np.exp(s, out=s),
                        lambda s=s, m=m, k=ones_k: np.matmul(s, k, out=m[..., 0]),                # softmax forward
                        lambda s=s, m=m: np.subtract(s, m, out=s), lambda s=s, p=p: np.multiply(s, p, out=s)])  # dZ
    layer_norm(), add((N, d))                                                      # ln_f; token + position
    z, m, ones_v = f32(N, V), f32(N), np.ones(V, np.float32)                       # cross-entropy over (N, V)
    ops.extend([lambda: np.max(z, axis=1, out=m), lambda: np.subtract(z, m[:, None], out=z), lambda: np.exp(z, out=z),
                lambda: np.matmul(z, ones_v, out=m), lambda: np.multiply(z, m[:, None], out=z)])
    P = sum(p.size for p in NextTokenModel(GPT(config)).parameters()) // chunks   # Adam and clipping, one flat array
    w, g, m1, m2, t = f32(P), f32(P), f32(P), np.abs(f32(P)), f32(P)
    ops.extend([lambda: np.multiply(m1, 0.9, out=m1), lambda: np.multiply(g, 0.1, out=t), lambda: np.add(m1, t, out=m1),
                lambda: np.multiply(m2, 0.999, out=m2), lambda: np.multiply(g, g, out=t), lambda: np.multiply(t, 1e-3, out=t),
                lambda: np.add(m2, t, out=m2), lambda: np.sqrt(m2, out=t), lambda: np.add(t, 1e-8, out=t),
                lambda: np.divide(m1, t, out=t), lambda: np.multiply(t, 1e-3, out=t), lambda: np.subtract(w, t, out=w),
                lambda: np.vdot(g, g), lambda: np.multiply(g, 0.5, out=g)])
    now = CLOCKS['user']

    def run():
        t0 = now()
        for op in ops:
            for _ in range(chunks):
                op()
        return 1e3 * (now() - t0)
    with np.errstate(all='ignore'):
        run()
        return dict(passes=len(ops), numpy=sorted(run() for _ in range(repeats))[repeats // 2])


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m bench.lm_profile')
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--clock', choices=sorted(CLOCKS), default='user')
    parser.add_argument('--torch', action='store_true', help="also print PyTorch's profile of the same step")
    parser.add_argument('--products', action='store_true',
                        help="also replay the step's matrix products alone, in NumPy and in PyTorch")
    parser.add_argument('--floor', action='store_true',
                        help="also replay the step's elementwise passes alone, at their NumPy minimum")
    args = parser.parse_args(argv)
    r = profile(args.steps, args.clock)
    print(f"module 09 full training step, 1 thread, {args.clock} time: {r['step_ms']:.1f} ms "
          f"({r['instrumented_ms']:.1f} ms instrumented), load average {os.getloadavg()[0]:.2f}")
    print(f"{'operation':<28} {'forward':>9} {'backward':>9} {'calls':>6}")
    names = sorted({k[0] for k in r['rows']}, key=lambda n: -sum(v for k, v in r['rows'].items() if k[0] == n))
    for name in names:
        fwd = r['rows'].get((name, 'forward'), r['rows'].get((name, 'step'), r['rows'].get((name, ''))))
        bwd = r['rows'].get((name, 'backward'))
        print(f"{name:<28} {fwd or 0:9.2f} {'' if bwd is None else format(bwd, '9.2f'):>9} "
              f"{r['calls'].get(name, ''):>6}")
    if args.torch:
        rows = torch_profile()
        if rows is None:
            print('\nPyTorch is not installed: no reference profile')
        else:
            print("\nPyTorch, the same step (self CPU time per step, its profiler's clock)")
            for key, ms, count in rows:
                print(f"{key[:56]:<56} {ms:9.2f} {count:6d}")
    if args.products:
        p = products()
        torch_ms = f", PyTorch {p['torch']:.1f} ms" if 'torch' in p else ''
        print(f"\nthe step's {p['products']} matrix products alone, back to back (user time, median of 11): "
              f"NumPy {p['numpy']:.1f} ms{torch_ms}")
    if args.floor:
        p, hot = passes(), passes(chunks=8)
        print(f"the step's {p['passes']} elementwise passes alone, one NumPy call each into preallocated arrays "
              f"(user time, median of 11): {p['numpy']:.1f} ms; in 8 chunks that stay in the cache: {hot['numpy']:.1f} ms")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
