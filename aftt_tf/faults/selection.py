"""*Where* faults go, as one rule for every runtime: which layers a fault kind may touch.

Each runtime describes its model's weight-bearing layers as `Candidate`s (Keras: Dense and
Conv2D layers; TFLite: FULLY_CONNECTED and CONV_2D operators) and `select` applies the
same rule to both: kind, output layer, `--layers`, scope. No TensorFlow.
"""

from __future__ import annotations

import dataclasses
import fnmatch

from aftt_tf import vocabulary
from aftt_tf.faults import kinds
from aftt_tf.faults.spec import FaultTargetError


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A weight-bearing layer as the selection rule sees it.

    Attributes:
        name: layer name (Keras) or mapped operator name (TFLite).
        convolution: has filters (output channels) that 'filter' faults can zero.
        output: produces the model's output (no node faults there by default).
        node_faults: False when this runtime cannot place node faults on the layer at all
            (it is then no node candidate); naming it in `--layers` raises `node_refusal`.
        node_refusal: why node faults cannot be placed on this layer.
    """

    name: str
    convolution: bool
    output: bool
    node_faults: bool = True
    node_refusal: str | None = None


def select(
    candidates: list[Candidate],
    kind: kinds.FaultKind | str,
    scope: str = "all",
    layer_names: tuple[str, ...] = (),
    include_output_nodes: bool = False,
    model_name: str = "the model",
    all_layer_names: list[str] | None = None,
    names_from: str = "",
    exclude: tuple[str, ...] = (),
) -> list[str]:
    """Names of the layers that `kind` faults, in model order.

    Parameter kinds target every candidate ('filter': convolutions only); 'node' the
    non-output candidates unless `include_output_nodes`. `layer_names`, when given,
    restricts the selection and must name existing, faultable layers; `all_layer_names`
    lists every layer of the model for the error message (default: the candidates), and
    `names_from` says where the names come from when they are not the model's own.
    `layer_names` and `exclude` may be glob patterns ("block_*_depthwise").
    """
    kind = _check_vocabulary(kind, scope)
    if not candidates:
        raise FaultTargetError(f"Model {model_name!r} has no Dense or Conv2D layer to fault.")
    every_name = all_layer_names or [candidate.name for candidate in candidates]
    _check_scope_applies(scope, every_name, model_name)
    takers = [c.name for c in _by_kind(candidates, kind, (), include_output_nodes, model_name)]
    layer_names = _expand_for_kind(layer_names, takers, every_name)
    chosen = _by_kind(candidates, kind, layer_names, include_output_nodes, model_name)
    names = [candidate.name for candidate in chosen]
    if layer_names:
        existing = set(all_layer_names or [candidate.name for candidate in candidates])
        missing = [name for name in layer_names if name not in existing]
        if missing and names_from:
            raise FaultTargetError(
                f"Layers {missing} are not in the layer map of {model_name}; its layers are "
                f"{sorted(existing)} (names come from {names_from})."
            )
        if missing:
            raise FaultTargetError(
                f"Layers {missing} do not exist in {model_name!r}; its layers are "
                f"{sorted(existing)}."
            )
        wrong = [name for name in layer_names if name not in names]
        if wrong:
            raise FaultTargetError(
                f"Layers {wrong} cannot take {kind.name!r} faults; layers that can: {names}."
            )
        names = [name for name in names if name in layer_names]
    names = [name for name in names if vocabulary.in_scope(name, scope)]
    names = [name for name in names if not any(fnmatch.fnmatchcase(name, x) for x in exclude)]
    if not names:
        raise FaultTargetError(
            f"No layer of {model_name!r} takes {kind.name!r} faults in scope {scope!r}"
            + (f" after --exclude_layers={','.join(exclude)}." if exclude else ".")
        )
    return names


def _expand_for_kind(patterns, takers: list[str], every_name: list[str]) -> tuple[str, ...]:
    """A glob names the layers that can take the kind ('backbone/*' skips its
    BatchNormalization); one that matches none of them is expanded over every layer, so
    the error says what it matched."""
    names = []
    for pattern in patterns:
        matched = expand(takers, (pattern,))
        names.extend(matched if matched != (pattern,) else expand(every_name, (pattern,)))
    return tuple(dict.fromkeys(names))


def expand(names: list[str], patterns: tuple[str, ...]) -> tuple[str, ...]:
    """The names matching each glob pattern, in pattern order; a pattern that matches
    nothing stays as it is, so the selection reports it as missing."""
    chosen: list[str] = []
    for pattern in patterns:
        for name in fnmatch.filter(names, pattern) or [pattern]:
            if name not in chosen:
                chosen.append(name)
    return tuple(chosen)


def _check_scope_applies(scope: str, names: list[str], model_name: str) -> None:
    """Scopes 'extractor'/'head' are the paper classifiers' split; on any other model they
    would silently mean 'all' (or nothing), so they are refused there."""
    if scope != "all" and not set(vocabulary.HEAD_LAYER_NAMES) <= set(names):
        raise FaultTargetError(
            f"--scope={scope} splits the paper's classifiers at their head layers "
            f"{list(vocabulary.HEAD_LAYER_NAMES)}; {model_name!r} does not have them. Choose "
            "layers with --layers (glob patterns allowed) and --exclude_layers instead."
        )


def _check_vocabulary(kind, scope: str) -> kinds.FaultKind:
    try:
        kind = kinds.resolve(kind)
    except ValueError as error:
        raise FaultTargetError(str(error)) from None
    if scope not in vocabulary.SCOPES:
        raise FaultTargetError(
            f"Unknown scope {scope!r}; expected one of {', '.join(vocabulary.SCOPES)}."
        )
    return kind


def _by_kind(
    candidates: list[Candidate],
    kind: kinds.FaultKind,
    layer_names: tuple[str, ...],
    include_output_nodes: bool,
    model_name: str,
) -> list[Candidate]:
    if kind.whole_filters:
        chosen = [candidate for candidate in candidates if candidate.convolution]
        if not chosen:
            raise FaultTargetError(
                f"Filter faults need convolutions; {model_name!r} has none. Use "
                "--fault=weight or --fault=node."
            )
        return chosen
    if not kind.on_outputs:
        return list(candidates)
    for candidate in candidates:
        if not candidate.node_faults and candidate.name in layer_names:
            raise FaultTargetError(candidate.node_refusal or f"No node faults in {candidate.name}.")
    chosen = [
        candidate
        for candidate in candidates
        if candidate.node_faults and (include_output_nodes or not candidate.output)
    ]
    return chosen
