"""Helpers shared by the benchmarks: this machine's matmul rate and peak memory."""

from __future__ import annotations

import resource
import time

import tensorflow as tf


def matmul_gflops(size: int = 2048, repeats: int = 20) -> float:
    """float32 matmul rate of this machine in GFLOP/s (best of 3 runs of a compiled chain)."""
    a = tf.random.uniform((size, size))
    b = tf.random.uniform((size, size))

    @tf.function
    def chain(a, b):
        total = tf.zeros((size, size))
        for _ in range(repeats):
            total += tf.matmul(a, b)
        return total

    chain(a, b).numpy()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        chain(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * repeats / best / 1e9


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
