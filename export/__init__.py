"""Shipping the students: the shared ONNX writing (`export.onnx`), int8 quantization
(`export.quantize`) and parity machinery (`export.parity`), and one folder per domain
(`export.medication`, `export.news`) with its graphs, parity gates, bundle and run export.

Submodules are imported explicitly (``from export.medication.graph import export_student``) so
that this package stays importable without torch or onnx.
"""
