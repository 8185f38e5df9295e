"""Transient faults in a .tflite file: the file cut at the faulted layers' outputs.

A transient fault corrupts a value of one inference: no constant in the file can hold
it (a node fault's mask is the same for every inference). The graph is cut right after
the operator that produces each targeted output (the node point, where the Keras
runtime's ActivationFault sits) into pieces that the interpreter runs one after the
other on each batch: a piece's inputs are the tensors earlier pieces (or the model
input) made and it reads, its outputs those later pieces read (skip connections
included). Between pieces the batch's drawn values of the cut tensor are corrupted in
numpy, in the tensor's stored type: the bits of float32 values, or of int8 codes in an
int8 file; a stuck value is written quantized with the tensor's scale and zero point.
Every piece is built once per campaign; weights are never touched.
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert.tools import flatbuffer_utils

from aftt_tf.faults import transient
from aftt_tf.faults.spec import FaultSpec, FaultTargetError
from aftt_tf.runtimes import tflite_file


class _Piece:
    """One run of consecutive operators, with its interpreter resized to the batch."""

    def __init__(self, model: tflite_file.TFLiteFile, content: bytes, inputs, outputs, batch):
        self.inputs, self.outputs = inputs, outputs
        self.interpreter = model._interpreter_type(
            model_content=bytes(content), num_threads=model.num_threads
        )
        details = {d["index"]: d for d in self.interpreter.get_input_details()}
        self.shapes = {index: [int(d) for d in details[index]["shape"][1:]] for index in inputs}
        self.batch = None
        self.resize(batch)

    def resize(self, batch: int) -> None:
        if batch == self.batch:
            return
        self.input_views = {}  # Views of the old arena must go before it is reallocated.
        for index in self.inputs:
            self.interpreter.resize_tensor_input(index, [batch, *self.shapes[index]])
        self.interpreter.allocate_tensors()
        self.input_views = {index: self.interpreter.tensor(index) for index in self.inputs}
        self.batch = batch

    def run(self, values: dict[int, np.ndarray]) -> None:
        """Runs on `values` (tensor index -> batch) and adds its outputs there: views of
        the interpreter's own memory, valid until its next run (each is read before)."""
        for index, view in self.input_views.items():
            view()[...] = values[index]  # One copy into the arena (set_tensor: slower).
        self.interpreter.invoke()
        for index in self.outputs:
            values[index] = self.interpreter.tensor(index)()


class SplitModel:
    """A .tflite cut after each of `points` (tensor indices of layer outputs): `outputs`
    runs the pieces on batches and corrupts each cut tensor between them."""

    def __init__(self, model: tflite_file.TFLiteFile, points: dict[str, int], batch_size: int):
        graph = flatbuffer_utils.read_model_from_bytearray(bytearray(model.content))
        subgraph = graph.subgraphs[0]
        producer = _producers(subgraph)
        missing = sorted(name for name, point in points.items() if point not in producer)
        if missing:
            raise FaultTargetError(
                f"The outputs of {missing} are not computed by an operator of the main "
                "graph; transient faults go into layer outputs."
            )
        # In graph order: each piece ends with the operator making its cut tensor.
        self.points = dict(sorted(points.items(), key=lambda item: producer[item[1]]))
        self.model, self.batch_size = model, batch_size
        self.tensor_types = {
            name: np.dtype(tflite_file._NUMPY_TYPES[subgraph.tensors[index].type])
            for name, index in self.points.items()
        }
        self.sizes = {
            name: int(np.prod([int(d) for d in subgraph.tensors[index].shape[1:]]))
            for name, index in self.points.items()
        }
        self.quantization = {
            name: _quantization(subgraph.tensors[index]) for name, index in self.points.items()
        }
        self.pieces = [
            _Piece(model, content, inputs, outputs, self.batch_size)
            for content, inputs, outputs in _cut(graph, list(self.points.values()))
        ]
        self.input_index = int(subgraph.inputs[0])
        self.output_index = int(subgraph.outputs[0])
        self.whole = tflite_file.BatchedInterpreter(model, model.content, batch_size, model.guards)

    @property
    def widths(self) -> dict[str, int]:
        """Stored bits of each cut tensor's values."""
        return {name: dtype.itemsize * 8 for name, dtype in self.tensor_types.items()}

    def stored_value(self, name: str, value: float):
        """`value` in the cut tensor's own encoding; FaultTargetError when an integer
        tensor cannot hold it (clamping it would be another fault)."""
        dtype = self.tensor_types[name]
        if np.issubdtype(dtype, np.floating):
            return dtype.type(value)
        scale, zero_point = self.quantization[name]
        info = np.iinfo(dtype)
        low, high = (info.min - zero_point) * scale, (info.max - zero_point) * scale
        if not low - scale / 2 <= value <= high + scale / 2:
            raise FaultTargetError(
                f"--stuck_value={value:g} cannot be stored in the {dtype.name} output of "
                f"{name!r} (scale {scale:.6g}, zero point {zero_point}: range [{low:.6g}, "
                f"{high:.6g}]); the hardware would hold another value. Pick one in that "
                "range, or run the float file."
            )
        return dtype.type(np.clip(np.round(value / scale) + zero_point, info.min, info.max))

    def outputs(self, inputs: np.ndarray, plan, spec: FaultSpec) -> np.ndarray:
        """The model's outputs on `inputs` (model input type) with `plan`'s faults (a
        `transient.plan_cell` result; None or {} for none). Inferences without a fault run
        on the uncut file, as the fault-free (golden) run does; the struck ones through
        the pieces."""
        struck = np.unique(np.concatenate([f.examples for f in (plan or {}).values()] or [[]]))
        struck = struck.astype(np.int64)
        if not len(struck):
            return self.whole.outputs(inputs)
        result = None
        rest = np.setdiff1d(np.arange(len(inputs)), struck)
        parts = [(struck, self.piece_outputs(inputs[struck], struck, plan, spec))]
        if len(rest):
            parts.append((rest, self.whole.outputs(inputs[rest])))
        for rows, values in parts:
            if result is None:
                result = np.empty((len(inputs), *values.shape[1:]), values.dtype)
            result[rows] = values
        return result

    def piece_outputs(self, inputs: np.ndarray, examples: np.ndarray, plan, spec: FaultSpec):
        """Outputs of the pieces run in turn on `inputs` (the test examples `examples`,
        ascending), each cut tensor corrupted at the plan's faults on those examples."""
        stored = {}
        if spec.fault_kind.takes_value:
            stored = {name: self.stored_value(name, spec.value.stuck_value) for name in self.points}
        # Struck inferences are few at soft-error rates: the pieces take batches of the
        # next power of two (>= 16) that holds them, not padding to the full batch.
        batch = min(self.batch_size, max(16, 1 << (len(inputs) - 1).bit_length()))
        for piece in self.pieces:
            piece.resize(batch)
        results = []
        for start in range(0, len(inputs), batch):
            chunk = inputs[start : start + batch]
            ids = examples[start : start + batch]
            count = len(chunk)
            if count < batch:
                padding = np.zeros((batch - count, *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, padding])
            results.append(self._run_chunk(chunk, ids, plan, spec, stored)[:count])
        return np.concatenate(results)

    def _run_chunk(self, chunk, ids, plan, spec: FaultSpec, stored) -> np.ndarray:
        """The outputs of one batch through the pieces. Every view of an interpreter's
        memory is local here, so none is alive when a piece runs the next batch (LiteRT
        refuses to run while one is)."""
        values = {self.input_index: chunk}
        for piece, (name, point) in zip(
            self.pieces, [*self.points.items(), (None, None)], strict=True
        ):
            piece.run(values)
            if name is None or not plan:
                continue
            struck, elements, bits = plan[name].in_examples(int(ids[0]), int(ids[-1]) + 1)
            rows = np.searchsorted(ids, struck)  # Every example with a fault is in ids.
            flat = values[point].reshape(len(chunk), -1)
            if flat.shape[1] != self.sizes[name]:  # Positions were drawn for the file's shape.
                raise FaultTargetError(
                    f"The output of {name!r} holds {flat.shape[1]} values per inference at "
                    f"run time, not the {self.sizes[name]} the file declares (a dynamic "
                    "shape); transient faults need fixed layer outputs."
                )
            flat[rows, elements] = transient.corrupt(
                flat[rows, elements], bits, spec, stored.get(name)
            )
        result = values[self.output_index].copy()
        tflite_file.poison_rows(result, self.model.guards, values)
        return result


def _quantization(tensor) -> tuple[float, int]:
    parameters = tensor.quantization
    if parameters is None or parameters.scale is None or not len(parameters.scale):
        return 1.0, 0
    return float(parameters.scale[0]), int(parameters.zeroPoint[0])


def _cut(graph, points: list[int]) -> list[tuple[bytes, list[int], list[int]]]:
    """(piece file, input tensors, output tensors) of each piece of subgraph 0, cut
    right after the operator producing each point, in graph order."""
    subgraph = graph.subgraphs[0]
    operators = list(subgraph.operators)
    producer = _producers(subgraph)
    cuts = [producer[point] + 1 for point in points]
    bounds = list(zip([0, *cuts], [*cuts, len(operators)], strict=True))
    constant = {
        index
        for index, tensor in enumerate(subgraph.tensors)
        if _holds_data(graph.buffers[tensor.buffer])
    }
    graph_outputs = [int(t) for t in subgraph.outputs]
    # Buffers every piece keeps: other subgraphs' (loop bodies) and the metadata's.
    shared = {tensor.buffer for other in graph.subgraphs[1:] for tensor in other.tensors}
    shared |= {entry.buffer for entry in graph.metadata or []} | {0}
    pieces = []
    saved = subgraph.operators, subgraph.inputs, subgraph.outputs, graph.signatureDefs
    try:
        graph.signatureDefs = []  # Their tensor indices describe the whole model.
        for low, high in bounds:
            inside = operators[low:high]
            made = {int(t) for op in inside for t in op.outputs}
            read = [int(t) for op in inside for t in op.inputs if int(t) >= 0]
            later = {int(t) for op in operators[high:] for t in op.inputs if int(t) >= 0}
            inputs = sorted({t for t in read if t not in made and t not in constant})
            outputs = sorted({t for t in made if t in later or t in graph_outputs})
            subgraph.operators, subgraph.inputs, subgraph.outputs = inside, inputs, outputs
            used = {subgraph.tensors[t].buffer for t in {*read, *made}} | shared
            content = _serialized_with_buffers(graph, used)
            pieces.append((content, inputs, outputs))
    finally:
        subgraph.operators, subgraph.inputs, subgraph.outputs, graph.signatureDefs = saved
    return pieces


def _serialized_with_buffers(graph, used: set[int]) -> bytes:
    """The model's bytes holding only the buffers in `used`: a piece carries its own
    weights, not every piece's (the pieces together are one copy of the model)."""
    dropped = {}
    for index, buffer in enumerate(graph.buffers):
        if index not in used and getattr(buffer, "data", None) is not None:
            dropped[index] = buffer.data
            buffer.data = None
    try:
        return bytes(flatbuffer_utils.convert_object_to_bytearray(graph))
    finally:
        for index, data in dropped.items():
            graph.buffers[index].data = data


def _producers(subgraph) -> dict[int, int]:
    """Tensor index -> index of the operator that computes it."""
    return {
        int(output): index
        for index, operator in enumerate(subgraph.operators)
        for output in operator.outputs
    }


def _holds_data(buffer) -> bool:
    data = getattr(buffer, "data", None)
    return (data is not None and len(data) > 0) or getattr(buffer, "offset", 0) > 1
