"""The medication domain of the export stage: the student as ONNX (`graph`), its numpy weights,
the parity gates, the bundle and the export of a finished distill run (`run`)."""
