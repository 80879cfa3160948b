"""The app's one ONNX Runtime set-up, shared by the medication model and the news encoders:
CPU only, sequential execution, `threads` intra-op threads, one inter-op thread, warnings and
below kept quiet. onnxruntime is optional on the device (some mobile builds lack it): it is
imported only when a session is made."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contract.bundle import BundleError

__all__ = ["onnxruntime_available", "ort_session"]


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def ort_session(path: str | Path, threads: int = 1) -> Any:
    """An `onnxruntime.InferenceSession` of the graph at `path`; BundleError (naming the file)
    when onnxruntime cannot load it."""
    import onnxruntime as ort

    path = Path(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # onnxruntime raises its own exception types
        raise BundleError(f"{path.name}: onnxruntime cannot load it ({e})") from e
