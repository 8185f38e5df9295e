"""Helpers shared by the benchmarks: this machine's matmul rate and peak memory."""

from __future__ import annotations

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


def reset_peak_rss() -> bool:
    """Resets this process's peak RSS (Linux >= 4.0: /proc/self/clear_refs); True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def rss_status_mib() -> dict[str, float]:
    """Current (VmRSS) and peak since the last reset (VmHWM) resident memory, in MiB."""
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, amount, _ = line.split()
                values[name[:-1]] = int(amount) / 1024
    return {"current": values["VmRSS"], "peak": values["VmHWM"]}


def plain_pass_seconds(model, images, batch_size: int, repeats: int) -> float:
    """Seconds of one pass of `model` over `images` in chunks, compiled once with
    tf.function: what a campaign trial is measured against."""
    predict = tf.function(lambda x: model(x, training=False))
    chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    for chunk in chunks:
        predict(chunk).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        for chunk in chunks:
            predict(chunk).numpy()
    return (time.perf_counter() - start) / repeats


def trial_seconds(runner, rate: float, trials: int) -> float:
    """Seconds per campaign trial (cell) of `runner` at `rate`, after one to trace and
    build."""
    runner.evaluate_cell(rate, 0)
    start = time.perf_counter()
    for trial in range(trials):
        runner.evaluate_cell(rate, trial)
    return (time.perf_counter() - start) / trials
