"""Hardware-placed permanent faults: which weights or outputs a faulty processing element
(PE) of a ROWS x COLS systolic array corrupts, so that a fault rate means the share of
faulty PEs (Zhang et al., VTS 2018, "FAP"; SAFFIRA; ENFOR-SA).

A Dense or convolution layer runs as one matrix product: inputs (M x K) times weights
(K x N), K the kernel's input side (a convolution's kernel, HWIO, read as
(kh * kw * c_in) x c_out, the im2col layout) and N its output units or channels.

- weight_stationary: the weights are tiled onto the array; PE (r, c) holds W[k, n] for
  every k = r (mod ROWS) and n = c (mod COLS). A PE whose weight register is stuck
  corrupts exactly those weights: a weight fault (stuck at 0, a value, or a bit).
- output_stationary: PE (r, c) accumulates the outputs O[m, n] with m = r (mod ROWS) and
  n = c (mod COLS), m the output position within one inference (a convolution's
  flattened H_out x W_out; 0 for a Dense layer). A stuck-at-0 accumulator holds those
  outputs at 0: a node fault on exactly those positions.

Worked example (README): a Dense 5 -> 3 on a 2 x 2 array, weight stationary: PE (1, 0)
holds W[1, 0], W[1, 2], W[3, 0], W[3, 2]. Faulty PEs are drawn once per cell for the
whole array (one chip), the same for every layer. No TensorFlow.
"""

from __future__ import annotations

import re

import numpy as np

DATAFLOWS = ("weight_stationary", "output_stationary")


def parse_array(text: str) -> tuple[int, int]:
    """'32x32' -> (32, 32); ValueError naming the expected form."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text or "")
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise ValueError(
            f"--array must be ROWSxCOLS with positive sizes (e.g. 32x32), received {text!r}."
        )
    rows, cols = int(match.group(1)), int(match.group(2))
    if rows * cols > MAX_PES:
        raise ValueError(
            f"--array={text} has {rows * cols:,} PEs; this simulation holds one flag per PE "
            f"and takes arrays of up to {MAX_PES:,} PEs (e.g. 8192x8192; accelerators "
            "have 128x128 to 256x256). Pass a smaller array."
        )
    return rows, cols


# The largest array simulated: one bool per PE (64 MiB), drawn per cell.
MAX_PES = 1 << 26


def faulty_pes(rows: int, cols: int, rate: float, rng: np.random.Generator, sampling: str):
    """(rows, cols) indices of the faulty PEs: round(rate * rows * cols) distinct ones
    ('exact') or each with probability `rate` ('bernoulli')."""
    from aftt_tf.faults.sampling import sample_positions

    flat = sample_positions(rows * cols, rate, rng, sampling)
    return np.stack(np.unravel_index(np.sort(flat), (rows, cols)), axis=-1).reshape(-1, 2)


def matrix_shape(kernel_shape: tuple[int, ...]) -> tuple[int, int]:
    """(K, N) of a Dense (in, out) or convolution (..., c_in, c_out) kernel."""
    if len(kernel_shape) < 2:
        raise ValueError(f"A kernel of shape {kernel_shape} is not a matrix product.")
    return int(np.prod(kernel_shape[:-1])), int(kernel_shape[-1])


def weight_positions(kernel_shape, pes: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Flat kernel indices (Keras layout) held by the faulty PEs, weight stationary."""
    k, n = matrix_shape(tuple(kernel_shape))
    if not len(pes):
        return np.empty(0, np.int64)
    grid = np.zeros((rows, cols), bool)
    grid[pes[:, 0], pes[:, 1]] = True
    hit = grid[np.arange(k)[:, None] % rows, np.arange(n)[None, :] % cols]
    return np.flatnonzero(hit.reshape(-1))


def cell_pes(spec, rate: float, trial: int) -> np.ndarray | None:
    """The faulty PEs of a campaign cell (None without --array): one draw for the whole
    array, labelled 'array', so every layer and runtime sees the same chip."""
    if not spec.placement.array:
        return None
    from aftt_tf.faults.sampling import trial_rng

    rows, cols = parse_array(spec.placement.array)
    rng = trial_rng(spec.seed, spec.kind, "array", rate, trial)
    return faulty_pes(rows, cols, rate, rng, spec.placement.sampling)


def output_positions(output_shape, pes: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Flat positions of one inference's output (without the batch axis: (units,) or
    (H, W, C)) that the faulty PEs' accumulators hold, output stationary."""
    output_shape = tuple(int(d) for d in output_shape)
    n = output_shape[-1]
    m = int(np.prod(output_shape[:-1])) if len(output_shape) > 1 else 1
    if not len(pes):
        return np.empty(0, np.int64)
    grid = np.zeros((rows, cols), bool)
    grid[pes[:, 0], pes[:, 1]] = True
    hit = grid[np.arange(m)[:, None] % rows, np.arange(n)[None, :] % cols]
    return np.flatnonzero(hit.reshape(-1))


def simulate_weight_stationary(inputs, weights, rows, cols, stuck) -> np.ndarray:
    """Reference: inputs (M x K) times weights (K x N) on a tiled array, computed tile by
    tile with each PE's weight register, `stuck` (rows x cols, bool) holding 0."""
    inputs, weights = np.asarray(inputs, np.float64), np.asarray(weights, np.float64)
    k, n = weights.shape
    out = np.zeros((inputs.shape[0], n))
    for k0 in range(0, k, rows):
        for n0 in range(0, n, cols):
            tile = weights[k0 : k0 + rows, n0 : n0 + cols].copy()
            tile[stuck[: tile.shape[0], : tile.shape[1]]] = 0.0  # Stuck registers.
            out[:, n0 : n0 + tile.shape[1]] += inputs[:, k0 : k0 + tile.shape[0]] @ tile
    return out


def simulate_output_stationary(inputs, weights, rows, cols, stuck) -> np.ndarray:
    """Reference: (M x K) times (K x N) with output (m, n) accumulated by PE
    (m mod rows, n mod cols); a stuck-at-0 accumulator yields 0."""
    out = np.asarray(inputs, np.float64) @ np.asarray(weights, np.float64)
    m, n = out.shape
    out[stuck[np.arange(m)[:, None] % rows, np.arange(n)[None, :] % cols]] = 0.0
    return out


def unsupported(kernel_shapes, filter_axes) -> bool:
    """Whether a layer is not one matrix product with output channels last (depthwise,
    separable and transposed convolutions, recurrent layers, EinsumDense kernels of rank 3)."""
    if len(kernel_shapes) != 1 or len(kernel_shapes[0]) < 2 or filter_axes[0] not in (None, -1):
        return True
    # A kernel of rank > 2 without filters (EinsumDense: attention projections) does not
    # say which axes are the product's inputs and outputs.
    return len(kernel_shapes[0]) > 2 and filter_axes[0] != -1


def refusal(name: str) -> str:
    return (
        f"{name!r}: --array places faults on layers computed as one matrix product with "
        "output channels last (Dense, 2-D EinsumDense, convolutions); leave it out with "
        "--exclude_layers."
    )


def layer_plan(array: str, kernel_shapes, pes: np.ndarray):
    """The weights a layer keeps in the faulty PEs' registers (weight stationary), as a
    `sampling.LayerPlan` (a layer `unsupported` refuses is refused before any cell)."""
    from aftt_tf.faults.sampling import LayerPlan

    rows, cols = parse_array(array)
    positions = weight_positions(tuple(kernel_shapes[0]), pes, rows, cols)
    size = int(np.prod(kernel_shapes[0]))
    return LayerPlan((positions,), np.empty(0, np.int64), len(positions), size)
