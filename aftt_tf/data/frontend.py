"""One model/data front end for every binary and the Python API: which data (`--data` in
every form), which split, how stored data become model inputs (`--input_transform`), and
what the model outputs (logits or probabilities).

A built-in dataset is used only when it is named (`--data=fashion_mnist`) or when the
model's own run names it (the aftt-train `config.json` or aftt-export `manifest.json`
beside the file); a model of the user's with no `--data` is a usage error, never a
dataset guessed from the input shape. No TensorFlow, except `output_kind` (which reads a
Keras model).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from aftt_tf import vocabulary
from aftt_tf.data import datasets as data
from aftt_tf.data import inputs

DATA_FORMS = "a built-in name, tfds:NAME[:SPLIT], npz:PATH or folder:PATH"


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """Where examples come from and how they become model inputs (the shared flags).

    Attributes:
        data: a built-in name, `tfds:NAME[:SPLIT]`, `npz:PATH` or `folder:PATH`.
        data_dir, tfds_data_dir: local raw data and prepared TFDS data directories.
        npz_keys: names of the inputs and labels arrays of an .npz.
        input_transform: 'auto', 'unit', 'raw', 'symmetric' or 'MODULE:FUNCTION'.
        input_scale, input_offset: an affine transform x * scale + offset instead.
    """

    data: str = ""
    data_dir: str = ""
    tfds_data_dir: str = ""
    npz_keys: tuple[str, str] = ("x", "y")
    input_transform: str = "auto"
    input_scale: float | None = None
    input_offset: float | None = None

    def validate(self) -> None:
        """ValueError for values that are wrong before any file is read."""
        if len(self.npz_keys) != 2:
            raise ValueError(f"--npz_keys takes two names (inputs, labels), got {self.npz_keys}.")
        if self.data:
            kind, _, rest = self.data.partition(":")
            if rest and kind not in ("tfds", "npz", "folder"):
                raise ValueError(f"Unknown --data {self.data!r}; expected {DATA_FORMS}.")
            if not rest and self.data not in vocabulary.DATASETS:
                raise ValueError(
                    f"Unknown --data {self.data!r}; expected {DATA_FORMS} (built-in: "
                    f"{', '.join(vocabulary.DATASETS)})."
                )
            data.check_data_spec(self.data, tuple(self.npz_keys))
        if self.input_transform != "auto" or self.input_scale is not None:
            inputs.resolve(self.input_transform, self.input_scale, self.input_offset)

    def or_dataset(self, dataset: str) -> DataOptions:
        """These options with `dataset` (a binary's --dataset) as the data when --data is
        empty."""
        return dataclasses.replace(self, data=self.data or dataset)

    def transform(self, images: np.ndarray) -> inputs.InputTransform:
        """The transform of these stored examples ('auto' looks at them)."""
        return inputs.resolve(
            self.input_transform,
            self.input_scale,
            self.input_offset,
            dtype=images.dtype,
            sample=images,
        )


def flat_record(values: dict[str, Any]) -> dict[str, Any]:
    """A config's `dataclasses.asdict` with its `data_options` fields at the top level, as
    config.json files have always recorded them (old run directories resume)."""
    values = dict(values)
    values.update(values.pop("data_options"))
    values["npz_keys"] = list(values["npz_keys"])
    return values


@dataclasses.dataclass
class Examples:
    """Examples as stored, their labels and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    description: dict[str, Any]
    class_names: tuple[str, ...] = ()

    def head(self, count: int) -> Examples:
        """The first `count` examples (all when count is 0)."""
        if not count:
            return self
        return Examples(
            self.images[:count], self.labels[:count], self.description, self.class_names
        )

    def record(self) -> dict[str, Any]:
        """Where the examples came from, with their class names (a campaign's record)."""
        return {**self.description, "class_names": list(self.class_names)}

    @classmethod
    def of(
        cls, images: np.ndarray, labels: np.ndarray, description: dict[str, Any] | None = None
    ) -> Examples:
        """Arrays the caller holds, described (`class_names` in it become the names)."""
        description = dict(description or {})
        names = tuple(description.pop("class_names", ()))
        return cls(np.asarray(images), np.asarray(labels), description, names)


def model_dataset(model_path: str | Path | None) -> str | None:
    """The built-in dataset a model's own run names: aftt-train's config.json or
    aftt-export's manifest.json beside the file; None for anyone else's model."""
    if not model_path:
        return None
    folder = Path(model_path).parent
    for name in ("config.json", "manifest.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
        except (ValueError, OSError):
            continue
        if not isinstance(record, dict):
            continue
        for key in ("dataset", "data"):  # aftt-train and aftt-export; aftt-repair.
            if record.get(key) in vocabulary.DATASETS:
                return record[key]
    return None


def resolve_source(data_: str, model_path: str | Path | None, flag: str = "--data") -> str:
    """`data_`, else the built-in dataset the model's run names; ValueError otherwise."""
    if data_:
        return data_
    named = model_dataset(model_path)
    if named:
        return named
    raise ValueError(
        f"{flag} is required for {model_path or 'this model'}: give {DATA_FORMS}. (A built-in "
        "dataset is used without it only for a model whose aftt-train run or export names "
        "it; none is guessed from the input shape.)"
    )


def load(source: str, split: str, options: DataOptions) -> Examples:
    """The `split` ('train' or 'test') of `source`: a built-in dataset's split, a TFDS
    split (the one in `source`, else `split`), or the whole npz/folder file; checked."""
    kind, _, rest = source.partition(":")
    if not rest:  # Built-in.
        arrays, origin = data.load_arrays(
            source, options.data_dir or None, options.tfds_data_dir or None
        )
        images, labels = arrays[split]
        examples = Examples(images, labels, {"source": f"{source} ({origin})", "split": split})
    else:
        if kind == "tfds" and ":" not in rest:
            source = f"{source}:{split}"
        loaded = data.load_evaluation_data(
            source,
            data_dir=options.data_dir or None,
            tfds_data_dir=options.tfds_data_dir or None,
            npz_keys=tuple(options.npz_keys),
        )
        examples = Examples(
            loaded.images, loaded.labels, dict(loaded.description), tuple(loaded.class_names)
        )
    inputs.check_examples(examples.images, examples.labels)
    return examples


def for_model(
    options: DataOptions,
    split: str,
    model_path: str | Path | None,
    input_shape: tuple[int, ...],
    outputs: int | None,
    count: int = 0,
    given: Examples | None = None,
    flag: str = "--data",
) -> tuple[Examples, inputs.InputTransform]:
    """The first `count` examples (0: all) a model is measured on, checked to fit it, and
    their input transform: `given` (the Python API's arrays), else the `split` of the
    options' data (of the data the model's own run names when it names none). A built-in
    dataset of another shape is refused before any of it is read."""
    examples = given
    if examples is None:
        source = resolve_source(options.data, model_path, flag)
        if source in vocabulary.DATASETS:
            check_shape(vocabulary.input_shape_for(source), input_shape, source)
        examples = load(source, split, options)
    else:
        inputs.check_examples(examples.images, examples.labels)
    examples = examples.head(count)
    check_fits(examples, input_shape, outputs)
    return examples, options.transform(examples.images)


def check_shape(data_shape: tuple[int, ...], input_shape: tuple[int, ...], source: str) -> None:
    """The examples' shape is the model's input shape."""
    if tuple(data_shape) != tuple(input_shape):
        raise ValueError(
            f"The model takes inputs of shape {tuple(input_shape)} but {source} examples have "
            f"shape {tuple(data_shape)}; pass the data the model was trained on (--data)."
        )


def check_fits(examples: Examples, input_shape: tuple[int, ...], outputs: int | None) -> None:
    """The examples' shape is the model's input shape, a class folder has one subfolder
    per output, and every label indexes an output."""
    source = examples.description.get("source", "the data")
    check_shape(examples.images.shape[1:], input_shape, source)
    if outputs is None:
        return
    names = examples.class_names
    if names and len(names) != outputs:
        raise ValueError(
            f"{source} has {len(names)} classes {list(names[:5])}... but the model has "
            f"{outputs} outputs; pass a folder with one subfolder per class."
        )
    labels = examples.labels
    if len(labels) and (labels.min() < 0 or labels.max() >= outputs):
        raise ValueError(
            f"Labels of {source} range over [{int(labels.min())}, {int(labels.max())}] but "
            f"the model has {outputs} outputs; check the labels' encoding."
        )


def split_off(examples: Examples, fraction: float, seed: int) -> tuple[Examples, Examples]:
    """(rest, held out): a seeded random `fraction` of the examples held out (a file with
    one split: training on one part, measuring on the other)."""
    order = np.random.default_rng(seed).permutation(len(examples.labels))
    count = max(1, int(round(fraction * len(order))))
    held, rest = np.sort(order[:count]), np.sort(order[count:])
    if not len(rest):
        raise ValueError("Too few examples to hold some out; give more data.")

    def part(index: np.ndarray, name: str) -> Examples:
        description = {**examples.description, "part": name, "held_out_fraction": fraction}
        return Examples(
            examples.images[index], examples.labels[index], description, examples.class_names
        )

    return part(rest, "rest"), part(held, f"held out (seed {seed})")


def output_kind(model: Any) -> str:
    """'probabilities' when the model ends in a softmax (a Softmax layer, an Activation
    or a layer with activation='softmax'), 'sigmoid' for a final sigmoid, else 'logits'.
    Losses read it; top-1 accuracy is the same for all three."""
    import keras

    layer = model
    while isinstance(layer, keras.Model) and getattr(layer, "layers", None):
        layer = _output_layer(layer)
    if isinstance(layer, keras.layers.Softmax):
        return "probabilities"
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", "") or str(activation or "")
    if name.endswith("softmax"):
        return "probabilities"
    if name.endswith("sigmoid"):
        return "sigmoid"
    return "logits"


def _output_layer(model):
    """The layer whose output is the model's (the last layer of a Sequential)."""
    outputs = getattr(model, "outputs", None)
    if outputs and len(outputs) == 1:
        history = getattr(outputs[0], "_keras_history", None)
        if history is not None:
            return history[0]
    return model.layers[-1]


def training_output_kind(model: Any, where: str) -> str:
    """The output kind for a classification loss; ValueError for a final sigmoid (a
    multi-label output is not trained with the single-label losses here)."""
    kind = output_kind(model)
    if kind == "sigmoid":
        raise ValueError(
            f"{where} ends in a sigmoid: its outputs are independent per class, which the "
            "single-label losses here do not train. Save the model with a softmax or linear "
            "(logits) output."
        )
    return kind
