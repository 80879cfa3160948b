"""The offline app: reads a bundle with the standard library, numpy and (optionally) onnxruntime."""
