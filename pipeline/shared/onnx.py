"""ONNX Runtime sessions as every engine's CPU stages open them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.shared.errors import BackendError, BundleError


def ort_session(path: Path | str, n_threads: int | None, what: str = "", *, spin: bool = True,
                arena: bool = True) -> Any:
    """A CPU ONNX Runtime session with all graph optimisations, ``n_threads`` intra-op threads (0/None: ORT's
    default) and one inter-op thread. ``what`` names the model in the messages of a missing or unreadable file.
    ``spin=False``: idle intra-op threads sleep instead of spinning between calls (a stage that runs beside
    another one, e.g. a streaming decoder beside llama.cpp, must not take its cores while it waits).
    ``arena=False``: tensors are freed after each run instead of kept in ORT's arena, which never shrinks (a
    model run now and then, or one whose activations would otherwise stay resident beside the others)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendError("onnxruntime is not installed (pip install onnxruntime)") from e
    label = f"the {what} " if what else ""
    if not Path(path).is_file():
        raise BundleError(f"{label or 'the model '}{path} does not exist; convert the checkpoint again")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(n_threads) if n_threads else 0
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not arena:
        so.enable_cpu_mem_arena = False
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types
        raise BackendError(f"ONNX Runtime cannot load {label}{path}: {e}") from e


def trim_heap() -> None:
    """Give freed heap memory back to the system (glibc keeps it otherwise: a closed ONNX session's ~0.3 GB stayed
    in RSS). A no-op where there is no glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
