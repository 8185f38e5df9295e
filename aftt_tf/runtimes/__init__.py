"""The runtimes a campaign runs models on, registered once: each names the files it
loads, and how a model is sent to a Ray worker and rebuilt there. Model loading
(`load_campaign_model`), the Ray payloads (`payload`, `restore`) and the comparisons read
this registry; a new runtime is one module with `load`, `payload` and `restore` and one
`register` call.

The runtime modules are imported only when used, so a .tflite campaign on a device
without TensorFlow never imports it.

- Keras: `keras_runner` (the runtime), `targets` (which layers, applying and stripping
  faults), `layers` (registered Keras layers holding the masks), `transient_layer`,
  `registry` (layer types a campaign can fault, `register_layer`).
- TFLite: `tflite_runner` (the runtime), `tflite_file` (a .tflite reader and writer
  without TensorFlow), `tflite_nodes` (node-fault masks written into the flatbuffer),
  `tflite_transient` (transient faults in a cut file).
- Both: `nan_semantics` (one NaN/Inf rule for both runtimes).
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

from aftt_tf.faults.spec import CampaignModel


@dataclasses.dataclass(frozen=True)
class Runtime:
    """One runtime: its name (`CampaignModel.runtime`), the file suffixes it loads, and
    the module (imported lazily) whose `load(path)`, `payload(model)` and
    `restore(payload)` do the work."""

    name: str
    suffixes: tuple[str, ...]
    module: str

    def _module(self):
        return importlib.import_module(self.module)

    def load(self, path: Path) -> CampaignModel:
        return self._module().load(path)

    def payload(self, model: CampaignModel) -> dict[str, Any]:
        return {"runtime": self.name, **self._module().payload(model)}

    def restore(self, payload: dict[str, Any]) -> CampaignModel:
        return self._module().restore(payload)


_RUNTIMES: dict[str, Runtime] = {}
DEFAULT = "keras"  # Paths of no registered suffix (a .keras file, a directory, ...).


def register(runtime: Runtime) -> None:
    """Makes a runtime available to model loading and the Ray executor."""
    _RUNTIMES[runtime.name] = runtime


def get(name: str) -> Runtime:
    if name not in _RUNTIMES:
        raise ValueError(f"Unknown runtime {name!r}; expected one of {', '.join(_RUNTIMES)}.")
    return _RUNTIMES[name]


def for_path(path: str | Path) -> Runtime:
    """The runtime that loads `path`, by its suffix."""
    suffix = Path(path).suffix
    found = [r for r in _RUNTIMES.values() if suffix in r.suffixes]
    return found[0] if found else _RUNTIMES[DEFAULT]


register(Runtime("tflite", (".tflite",), "aftt_tf.runtimes.tflite_runner"))
register(Runtime("keras", (".keras",), "aftt_tf.runtimes.keras_runner"))


def as_campaign_model(model: Any) -> CampaignModel:
    """`model` as a `CampaignModel`: objects that already are one pass through (TFLite
    models); anything else is taken as a Keras model (TensorFlow is imported only then)."""
    if isinstance(model, CampaignModel):
        return model
    from aftt_tf.runtimes import keras_runner

    return keras_runner.KerasModel(model)


def load_campaign_model(path: str | Path) -> CampaignModel:
    """A campaign model from a file: `.tflite` (no TensorFlow needed) or `.keras`."""
    return for_path(path).load(Path(path))


def payload(model: CampaignModel) -> dict[str, Any]:
    """What a worker needs to rebuild `model` (`restore`), by its runtime."""
    return get(model.runtime).payload(model)


def restore(payload: dict[str, Any]) -> CampaignModel:
    """The model a `payload` describes, rebuilt by its runtime."""
    return get(payload["runtime"]).restore(payload)
