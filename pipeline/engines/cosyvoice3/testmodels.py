"""TEST MODELS: small stand-ins for ``speech_tokenizer_v3.onnx`` and ``campplus.onnx`` with the real signatures.

They carry random weights and mean nothing; they let tests and random bundles (``make-random-bundle``)
run the prompt frontend without the 970 MB / 28 MB upstream models. Outputs are deterministic
functions of the inputs, so a changed feature changes the result.

- test speech tokenizer: ``feats`` (1, 128, T) float32, ``feats_length`` (1,) int32 → ``indices`` (1, L//4)
  int64, L = feats_length. Each group of 4 frames is averaged, projected to 8 dims and squashed with
  tanh; each dim is rounded to 3 levels and the 8 digits read as a base-3 number (FSQ-like, 3^8 = 6561 ids).
- test campplus: ``input`` (1, T, 80) float32 → ``output`` (1, 192): per-bin RMS over time, then an affine map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.shared.fsutil import atomic_path

TEST_MODEL_DOC = "cosyvoice-rk TEST MODEL (random weights, not the upstream network)"
_OPSET = 17
_IR_VERSION = 8  # readable by onnxruntime >= 1.14


def _save(graph, path: Path | str, name: str) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)],
                              producer_name="cosyvoice-rk-testmodels", doc_string=f"{TEST_MODEL_DOC}: {name}")
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def make_test_speech_tokenizer(path: Path | str, seed: int = 0, *, n_mels: int = 128) -> Path:
    """Write the test speech tokenizer ONNX to ``path`` (see the module docstring)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    digits = 8
    w = (rng.standard_normal((n_mels, digits)) * (3.0 / np.sqrt(n_mels))).astype(np.float32)
    b = (rng.standard_normal(digits) * 0.5).astype(np.float32)
    powers = (3.0 ** np.arange(digits)).astype(np.float32).reshape(digits, 1)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(b, "b"),
        numpy_helper.from_array(powers, "powers"),
        numpy_helper.from_array(np.array([4], np.int64), "four"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([2], np.int64), "axis_t"),
        numpy_helper.from_array(np.array([1, n_mels, -1, 4], np.int64), "group_shape"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Cast", ["feats_length"], ["len64"], to=TensorProto.INT64),
        helper.make_node("Div", ["len64", "four"], ["n_groups"]),
        helper.make_node("Mul", ["n_groups", "four"], ["end"]),
        helper.make_node("Slice", ["feats", "zero", "end", "axis_t"], ["used"]),
        helper.make_node("Reshape", ["used", "group_shape"], ["grouped"]),
        helper.make_node("ReduceMean", ["grouped"], ["pooled"], axes=[3], keepdims=0),  # (1, M, L//4)
        helper.make_node("Transpose", ["pooled"], ["pooled_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["pooled_t", "w"], ["proj"]),
        helper.make_node("Add", ["proj", "b"], ["proj_b"]),
        helper.make_node("Tanh", ["proj_b"], ["h"]),
        helper.make_node("Round", ["h"], ["level"]),
        helper.make_node("Add", ["level", "one"], ["digit"]),  # {0, 1, 2}
        helper.make_node("MatMul", ["digit", "powers"], ["code"]),
        helper.make_node("Squeeze", ["code", "axis_t"], ["code2"]),
        helper.make_node("Cast", ["code2"], ["indices"], to=TensorProto.INT64),
    ]
    graph = helper.make_graph(
        nodes, "test_speech_tokenizer",
        [helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, n_mels, "T"]),
         helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1])],
        [helper.make_tensor_value_info("indices", TensorProto.INT64, [1, "L"])],
        inits,
    )
    return _save(graph, path, "speech tokenizer")


def make_test_campplus(path: Path | str, seed: int = 0, *, n_mels: int = 80, dim: int = 192) -> Path:
    """Write the test speaker encoder ONNX to ``path`` (see the module docstring)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n_mels, dim)) / np.sqrt(n_mels)).astype(np.float32)
    b = (rng.standard_normal(dim) * 0.1).astype(np.float32)
    nodes = [
        # The input is mean-normalised over time, so its mean carries nothing: use the per-bin RMS.
        helper.make_node("Mul", ["input", "input"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[1], keepdims=0),
        helper.make_node("Sqrt", ["var"], ["rms"]),
        helper.make_node("MatMul", ["rms", "w"], ["proj"]),
        helper.make_node("Add", ["proj", "b"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "test_campplus",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, "T", n_mels])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, dim])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return _save(graph, path, "campplus")
