"""The news domain of the export stage: the student's two encoders as ONNX (`graphs`), the
teacher tokenizer as data (`tokenizer`), the parity gates (`parity`), the bundle's other files
(`bundle`) and the export of a finished news run (`run`)."""
