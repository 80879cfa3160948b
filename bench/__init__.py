"""The benchmarks (scripts: `python bench/<name>.py`) and `bench.harness`, the drivers they
share with the browser tests. Not part of the wheel, which packages app, distill and export."""
