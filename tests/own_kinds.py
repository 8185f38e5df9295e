"""A fault kind of a user's own, for `--import=tests.own_kinds` (tests/faults_cli_test.py):
weights stuck at minus their tensor's largest |w|."""

from __future__ import annotations

import numpy as np

from aftt_tf.faults import kinds


class StuckAtMinusMax(kinds.FaultKind):
    name = "stuck_at_minus_max"
    family = kinds.PARAMETER
    summary = "weights stuck at minus their tensor's largest |w|"
    per_element = True

    def corrupt(self, stored, positions, rng, spec):
        values = np.array(stored.values, copy=True)
        values[positions] = stored.encode(-float(np.max(np.abs(stored.reals()))), positions)
        return values


kinds.register(StuckAtMinusMax)
