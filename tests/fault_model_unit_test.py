"""Unit tests of the fault model's pure modules (issue 31 item 8): sampling (positions,
generators, bits), placement (which elements of a layer, per element, per filter,
protected), selection (which layers) and the spec (checks, keys). No model, no
TensorFlow: each function on its own, with exact expected values."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from aftt_tf.faults import kinds, placement, sampling, selection
from aftt_tf.faults import spec as spec_lib
from aftt_tf.faults.spec import FaultSpec, FaultTargetError


def test_exact_sampling_faults_exactly_the_rate_and_bernoulli_about_it():
    rng = np.random.default_rng(0)
    positions = sampling.sample_positions(1000, 0.123, rng, "exact")
    assert len(positions) == 123 and len(set(positions.tolist())) == 123
    assert positions.min() >= 0 and positions.max() < 1000
    assert len(sampling.sample_positions(10, 0.04, rng, "exact")) == 0  # round(0.4) = 0.
    np.testing.assert_array_equal(sampling.sample_positions(7, 1.0, rng, "exact"), np.arange(7))
    drawn = sampling.sample_positions(100_000, 0.3, np.random.default_rng(1), "bernoulli")
    assert abs(len(drawn) / 100_000 - 0.3) < 0.01
    with pytest.raises(ValueError, match="Unknown sampling"):
        sampling.sample_positions(10, 0.5, rng, "other")


def test_a_cells_generator_depends_on_its_cell_only():
    draw = lambda *key: sampling.trial_rng(*key).random(4).tolist()  # noqa: E731
    assert draw(0, "weight", "dense", 0.3, 1) == draw(0, "weight", "dense", 0.3, 1)
    for other in [(1, "weight", "dense", 0.3, 1), (0, "node", "dense", 0.3, 1),
                  (0, "weight", "conv", 0.3, 1), (0, "weight", "dense", 0.31, 1),
                  (0, "weight", "dense", 0.3, 2)]:  # fmt: skip
        assert draw(*other) != draw(0, "weight", "dense", 0.3, 1), other


def test_bits_are_set_as_stored():
    values = np.array([1.0, -2.0, 0.5], np.float32)
    flipped = sampling.set_bits(values, np.array([31, 31, 30]), "flip")
    assert flipped[0] == -1.0 and flipped[1] == 2.0 and flipped[2] == np.float32(0.5 * 2.0**128)
    assert sampling.set_bits(values, np.array([0, 0, 0]), "stuck_at_0")[0] == 1.0  # Already 0.
    codes = np.array([3, -128], np.int8)
    np.testing.assert_array_equal(sampling.set_bits(codes, np.array([7, 7]), "flip"), [-125, 0])
    np.testing.assert_array_equal(
        sampling.set_bits(codes, np.array([1, 0]), "stuck_at_1"), [3, -127]
    )


def test_parameter_fault_writes_zero_value_and_bits_at_the_positions_only():
    parameter = np.array([[1.0, -3.0], [2.0, 0.5]], np.float32)
    positions = np.array([1, 2])
    rng = np.random.default_rng(0)

    def fault(kind, **fields):
        spec = FaultSpec(kind=kind, **fields)
        return placement.parameter_fault(parameter, positions, spec.fault_kind, spec, rng)

    keep, replacement = fault("weight")
    np.testing.assert_array_equal(keep.reshape(-1), [1, 0, 0, 1])
    np.testing.assert_array_equal(replacement, 0)
    _, stuck = fault("stuck_value")
    np.testing.assert_array_equal(stuck.reshape(-1), [0, 3.0, 3.0, 0])  # Max |w| = 3.
    _, bits = fault("bit", bit_position=31)
    np.testing.assert_array_equal(bits.reshape(-1), [0, 3.0, -2.0, 0])  # Sign flipped.


def test_element_plans_draw_each_kernel_with_its_own_generator():
    """Kernel 0 and the bias share the layer's generator; kernel 1 has its own, so adding
    a kernel never moves the positions of the first."""
    spec = FaultSpec(kind="weight", seed=4)
    layer_rng = sampling.trial_rng(4, "weight", "lstm", 0.25, 0)
    rng_for = placement.kernel_generators(spec, "lstm", ("kernel", "recurrent"), 0.25, 0, layer_rng)
    plan = sampling.plan_layer_fault(
        [(4, 8), (2, 8)], [None, None], 8, kinds.get("weight"), 0.25, rng_for, "exact", True
    )
    assert [len(p) for p in plan.kernel_positions] == [8, 4] and len(plan.bias_positions) == 2
    assert plan.faulted == 14 and plan.elements == 56
    alone = sampling.plan_layer_fault(
        [(4, 8)], [None], 8, kinds.get("weight"), 0.25,
        lambda i: sampling.trial_rng(4, "weight", "lstm", 0.25, 0), "exact", False,
    )  # fmt: skip
    np.testing.assert_array_equal(alone.kernel_positions[0], plan.kernel_positions[0])


def test_filter_plans_remove_whole_filters_and_protection_drops_what_it_covers():
    rng = lambda i: np.random.default_rng(3)  # noqa: E731
    plan = sampling.plan_layer_fault(
        [(3, 3, 2, 4)], [3], 4, kinds.get("filter"), 0.5, rng, "exact", False
    )
    kernel = np.zeros((3, 3, 2, 4), bool).reshape(-1)
    kernel[plan.kernel_positions[0]] = True
    filters = kernel.reshape(3, 3, 2, 4).all(axis=(0, 1, 2))
    assert filters.sum() == 2 and plan.faulted == 2  # Whole filters, half of them.
    assert not kernel.reshape(3, 3, 2, 4)[..., ~filters].any()
    guarded = sampling.plan_layer_fault(
        [(10, 10)], [None], 0, kinds.get("weight"), 0.5, lambda i: np.random.default_rng(5), "exact", False,
        protected=[np.arange(50)],
    )  # fmt: skip
    unguarded = sampling.plan_layer_fault(
        [(10, 10)],
        [None],
        0,
        kinds.get("weight"),
        0.5,
        lambda i: np.random.default_rng(5),
        "exact",
        False,
    )
    expected = unguarded.kernel_positions[0][unguarded.kernel_positions[0] >= 50]
    np.testing.assert_array_equal(guarded.kernel_positions[0], expected)
    assert guarded.protected == 50 - len(expected) + (len(unguarded.kernel_positions[0]) - 50)


def _candidates():
    return [
        selection.Candidate("conv1", convolution=True, output=False),
        selection.Candidate("block_1_depthwise", convolution=True, output=False),
        selection.Candidate("head_dense", convolution=False, output=False),
        selection.Candidate("logits", convolution=False, output=True),
    ]


def test_selection_by_kind_scope_patterns_and_exclusions():
    names = lambda kind, **kw: selection.select(_candidates(), kind, **kw)  # noqa: E731
    assert names("weight") == ["conv1", "block_1_depthwise", "head_dense", "logits"]
    assert names("filter") == ["conv1", "block_1_depthwise"]
    assert names("node") == ["conv1", "block_1_depthwise", "head_dense"]  # Not the output.
    assert names("node", include_output_nodes=True)[-1] == "logits"
    assert names("weight", scope="head") == ["head_dense", "logits"]
    assert names("weight", layer_names=("block_*",)) == ["block_1_depthwise"]
    assert names("weight", exclude=("logits", "conv*")) == ["block_1_depthwise", "head_dense"]
    with pytest.raises(FaultTargetError, match=r"\['nope'\] do not exist"):
        names("weight", layer_names=("nope",))
    with pytest.raises(FaultTargetError, match="cannot take 'filter' faults"):
        names("filter", layer_names=("head_dense",))
    with pytest.raises(FaultTargetError, match="No layer"):
        names("weight", exclude=("*",))


def test_spec_checks_and_keys():
    FaultSpec(kind="weight", rates=(0.0, 0.5)).validate()
    for bad in (
        {"rates": (1.5,)},
        {"rates": (float("nan"),)},
        {"trials": 0},
        {"kind": "nope"},
        {"kind": "stuck_value", "stuck_value": float("inf")},
    ):
        with pytest.raises(ValueError):
            FaultSpec(**{"kind": "weight", **bad}).validate()
    for not_a_sequence in (0.5, "0.1,0.2", None):
        with pytest.raises(ValueError, match="rates must be a sequence of fractions"):
            FaultSpec(kind="weight", rates=not_a_sequence)
    key = FaultSpec(kind="weight", rates=(0.1,), trials=3).key()
    assert key == FaultSpec(kind="weight", rates=(0.5, 0.7), trials=30).key()  # Resumable.
    assert key != FaultSpec(kind="weight", seed=1).key()
    assert key != FaultSpec(kind="weight", layers=("conv1",)).key()


def test_spec_is_composed_of_groups_that_check_their_own_fields():
    flat = FaultSpec(kind="bit", bit_position=30, layers=("dense",), sampling="bernoulli")
    grouped = FaultSpec(
        kind="bit",
        selection=spec_lib.Selection(layers=("dense",)),
        value=spec_lib.FaultValue(bit_position=30),
        placement=spec_lib.Placement(sampling="bernoulli"),
    )
    assert flat == grouped and flat.key() == grouped.key()
    assert flat.selection.layers == ("dense",) and flat.value.bit_position == 30
    assert flat.timing == spec_lib.Timing()  # Permanent: no per-inference count.
    # A flat field given over its group replaces that field only (dataclasses.replace).
    moved = dataclasses.replace(flat, layers=("conv",))
    assert moved.selection.layers == ("conv",) and moved.value.bit_position == 30
    assert FaultSpec.from_dict(flat.as_dict()) == flat  # campaign.json round trip.
    # The flat record is the one campaign.json and the key always had: no group names.
    assert not set(flat.as_dict()) & {"selection", "value", "placement", "timing"}
    with pytest.raises(TypeError, match="no field.*bit_postion"):
        FaultSpec(kind="bit", bit_postion=3)
    with pytest.raises(TypeError, match="selection must be a Selection"):
        FaultSpec(kind="weight", selection={"layers": ("dense",)})
    with pytest.raises(TypeError, match="positional"):  # The fifth was once `scope`.
        FaultSpec("weight", (0.1,), 3, 0, "head")
    # Each group refuses its own bad field before any kind is looked at.
    with pytest.raises(ValueError, match="bit_position must be in 0..31"):
        spec_lib.FaultValue(bit_position=40)
    with pytest.raises(ValueError, match="Unknown scope"):
        spec_lib.Selection(scope="everything")
    with pytest.raises(ValueError, match="faults_per_inference"):
        spec_lib.Timing(faults_per_inference=-1)
    with pytest.raises(ValueError, match="ROWSxCOLS|array"):
        spec_lib.Placement(array="8by8")
    # How groups go with the kind is the spec's check, once, at construction.
    with pytest.raises(ValueError, match="--faults_per_inference places transient faults"):
        FaultSpec(kind="weight", timing=spec_lib.Timing(faults_per_inference=2))
