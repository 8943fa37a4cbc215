"""Benchmarks: our kernels against PyTorch (or another reference) measured side by side in one run."""
