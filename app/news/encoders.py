"""The news bundle's two int8 graphs: the item encoder (piece ids -> item vector) and the user
encoder (clicked items' vectors -> user vector), one item / one user per call.

Item and user vectors are computed one item / one user per encoder call with no padding: dynamic
int8 quantization scales activations per call, so padding or batch neighbours would change an
item's vector, and a cached vector must not depend on which batch computed it. The exporter's
int8 parity check (`export.news.parity`) measures exactly this way of computing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.news.bundle import ITEM_INPUTS, USER_INPUTS, NewsBundle
from app.onnx_session import ort_session
from contract.bundle import BundleError
from contract.layout import PAD_ID

__all__ = ["NewsEncoders"]


class NewsEncoders:
    """The bundle's two int8 graphs in onnxruntime sessions (`app.onnx_session.ort_session`)."""

    def __init__(self, bundle: NewsBundle, threads: int = 1) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1; got {threads!r}")
        self.dim = bundle.dim
        self.item = ort_session(bundle.item_model_path, threads)
        self.user = ort_session(bundle.user_model_path, threads)
        for sess, want, path in (
            (self.item, ITEM_INPUTS, bundle.item_model_path),
            (self.user, USER_INPUTS, bundle.user_model_path),
        ):
            got = tuple(i.name for i in sess.get_inputs())
            if got != want or len(sess.get_outputs()) != 1:
                raise BundleError(f"{path.name}: graph inputs {got}, expected {want}")
        self._item_out = [self.item.get_outputs()[0].name]
        self._user_out = [self.user.get_outputs()[0].name]
        self.item_calls = 0
        self.user_calls = 0

    def item_vector(self, ids: Sequence[int]) -> np.ndarray:
        """One item's vector [dim] from its piece ids (no padding; one pad for no pieces)."""
        tokens = np.asarray([list(ids) or [PAD_ID]], dtype=np.int64)
        self.item_calls += 1
        (out,) = self.item.run(self._item_out, {"tokens": tokens})
        return np.asarray(out[0], dtype=np.float32)

    def user_vector(self, history_vecs: np.ndarray) -> np.ndarray:
        """One user's vector [dim] from the clicked items' vectors [H, dim], oldest first
        (H = 0: the model's cold-start vector)."""
        h = np.ascontiguousarray(history_vecs, dtype=np.float32)
        if h.ndim != 2 or h.shape[1] != self.dim:
            raise ValueError(f"history vectors have shape {h.shape}; expected (H, {self.dim})")
        if len(h):
            vecs, mask = h[None], np.ones((1, len(h)), dtype=np.float32)
        else:  # as in training: one padding slot, masked out
            vecs = np.zeros((1, 1, self.dim), dtype=np.float32)
            mask = np.zeros((1, 1), dtype=np.float32)
        self.user_calls += 1
        (out,) = self.user.run(self._user_out, {"history_vecs": vecs, "history_mask": mask})
        return np.asarray(out[0], dtype=np.float32)
