"""A fault kind of a user's own, for `--import=tests.own_kinds` (tests/faults_cli_test.py):
weights stuck at their tensor's mean |w| (a weak stuck-at fault)."""

from __future__ import annotations

import numpy as np

from aftt_tf.faults import kinds


class StuckAtMeanMagnitude(kinds.FaultKind):
    name = "stuck_at_mean_magnitude"
    family = kinds.PARAMETER
    summary = "weights stuck at their tensor's mean |w|"
    per_element = True

    def corrupt(self, stored, positions, rng, spec):
        faulty = np.array(stored.values, copy=True)
        faulty[positions] = stored.encode(float(np.mean(np.abs(stored.reals()))), positions)
        return faulty


kinds.register(StuckAtMeanMagnitude)
