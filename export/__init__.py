"""Shipping the student: ONNX export (`export.onnx`), int8 quantization (`export.quantize`) and
the parity checks that gate a bundle (`export.parity`).

Submodules are imported explicitly (``from export.onnx import export_student``) so that this
package stays importable without torch or onnx.
"""
