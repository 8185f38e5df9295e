"""Training methods, each defined once as an object with its traits; the paper path
(`training.config`, `trainers`), `harden` on a user's model and the comparisons ask the
method for its traits and never compare its name. No TensorFlow.

Methods compose where the literature composes them: `aftt_fat` is the games then
fault-aware fine-tuning; weight clipping (`--weight_clip`) and int8 storage
(`--storage=int8`) compose with every method (clip + bit-error training = RandBET).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Method:
    """One training method.

    Attributes:
        name: the value of --method (recorded in every run directory).
        title: for reports.
        pretrains: the AFTT games (Game 1 and Game 2) run before supervised training.
        fault_aware: supervised steps draw faults (`faults.kinds`, --fault_aware_kinds).
        penalty: the weight penalty of its loss ('l1', 'l2') or 'none'.
        restricts_range: activations are clipped to the ranges seen on training data.
        paper: one of the paper's methods (aftt-train --architecture, aftt-reproduce).
        rewires: it changes the network (clip layers, an extractor split), so a user's
            model must be Sequential or Functional.
        trains: it needs supervised epochs (range may take none).
        proposed: the paper's proposed method (reports rank the others against it).
    """

    name: str
    title: str
    pretrains: bool = False
    fault_aware: bool = False
    penalty: str = "none"
    restricts_range: bool = False
    paper: bool = True
    rewires: bool = False
    trains: bool = True
    proposed: bool = False


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _METHODS and _METHODS[method.name] != method:
        raise ValueError(f"A method named {method.name!r} is already registered.")
    _METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    """The method named `name`; ValueError listing the registered ones otherwise."""
    if name not in _METHODS:
        raise ValueError(f"Unknown method {name!r}; expected one of {', '.join(_METHODS)}.")
    return _METHODS[name]


def names(**traits) -> tuple[str, ...]:
    """Registered method names with these trait values, in order: names(paper=True)."""
    return tuple(
        name
        for name, method in _METHODS.items()
        if all(getattr(method, trait) == value for trait, value in traits.items())
    )


def proposed() -> str:
    """The paper's proposed method's name."""
    return names(proposed=True)[0]


for _method in (
    Method("none", "no regularisation"),
    Method("l1", "Lasso (L1)", penalty="l1"),
    Method("l2", "Tikhonov (L2)", penalty="l2"),
    Method("fat", "fault-aware training", fault_aware=True),
    Method("aftt", "AFTT (proposed)", pretrains=True, rewires=True, proposed=True),
    Method(
        "aftt_fat", "AFTT + fault-aware fine-tuning", pretrains=True, fault_aware=True, rewires=True
    ),
    Method(
        "range",
        "activation range restriction",
        restricts_range=True,
        paper=False,
        rewires=True,
        trains=False,
    ),
    # Range restriction, then fault-aware training through the bounds: the bounds keep a
    # struck output finite, so training can draw activation_bit faults.
    Method(
        "range_fat",
        "range restriction + fault-aware training",
        fault_aware=True,
        restricts_range=True,
        paper=False,
        rewires=True,
    ),
):
    register(_method)
