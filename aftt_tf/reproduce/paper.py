"""The paper's own published numbers, labelled as such wherever the report shows them."""

from __future__ import annotations

# Paper Table II: (train, test, generalization error) in %. "Architecture 1" rows are
# fmnist_mlp and cifar10_conv7, "Architecture 2" rows fmnist_cnn and cifar10_conv3.
PAPER_TABLE_II = {
    "fmnist_mlp": {
        "none": (99.51, 89.42, 10.09),
        "l1": (98.42, 88.96, 9.46),
        "l2": (97.16, 88.52, 8.64),
        "aftt": (95.78, 90.25, 5.53),
    },
    "fmnist_cnn": {
        "none": (99.60, 90.94, 8.66),
        "l1": (96.98, 91.19, 5.79),
        "l2": (95.74, 90.61, 5.13),
        "aftt": (96.00, 91.55, 4.55),
    },
    "cifar10_conv7": {
        "none": (96.35, 86.11, 10.24),
        "l1": (79.95, 77.78, 2.17),
        "l2": (93.87, 87.21, 6.66),
        "aftt": (91.36, 87.58, 3.78),
    },
    "cifar10_conv3": {
        "none": (85.16, 81.71, 3.45),
        "l1": (83.90, 81.68, 2.22),
        "l2": (84.83, 81.71, 3.12),
        "aftt": (82.00, 80.87, 1.13),
    },
}
# Paper Table I (the architecture is not stated): lambda, train, test, gen. error in %.
PAPER_TABLE_I = (
    (0.0, 98.60, 88.90, 9.70),
    (1e-4, 97.84, 89.89, 7.95),
    (1e-3, 93.88, 88.86, 5.02),
    (0.1, 66.57, 65.74, 0.83),
)
# Paper section VI.D: (architecture, kind) -> (rate, quantity, {method: value in %}).
PAPER_FAULTS = {
    ("fmnist_mlp", "weight"): (0.6, "accuracy", {"aftt": 84.36, "l2": 81.66, "l1": 61.42}),
    ("fmnist_mlp", "node"): (0.68, "accuracy", {"aftt": 84.60, "l2": 78.51, "l1": 51.09}),
    ("fmnist_cnn", "filter"): (0.4, "drop", {"aftt": 12.58, "l2": 24.98, "l1": 30.44}),
}

# The paper's table of each penalty's lambda sweep (Table I: Tikhonov), as report titles.
PAPER_SWEEP_TABLES = {"l2": "Table I analog: "}
