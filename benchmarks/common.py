"""Helpers shared by the benchmarks: this machine's matmul rate and peak memory."""

from __future__ import annotations

import resource
import time

import tensorflow as tf


def matmul_gflops(size: int = 2048, repeats: int = 20) -> float:
    """float32 matmul rate of this machine in GFLOP/s (best of 3 runs of a compiled chain).

    Each product depends on the previous one, so the graph optimiser cannot merge them.
    """
    x = tf.random.normal((size, size))
    b = tf.random.normal((size, size)) / size**0.5

    @tf.function
    def chain(x, b):
        for _ in range(repeats):
            x = tf.matmul(x, b)
        return x

    chain(x, b).numpy()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        chain(x, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * repeats / best / 1e9


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
