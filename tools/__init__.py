"""Tools beside the paper's ideas: benchmarks (bench.py), Hugging Face export/import (interop.py), the
`add` error read-out (readout.py), and asking a run a typed question (ask.py)."""
