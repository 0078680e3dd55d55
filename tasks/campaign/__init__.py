"""The campaign engine: one config (``config``), the loop in turns (``engine``), the asynchronous
pipeline (``pipeline``). Importing this package is light; the engine modules import torch-free
code only until they train. See docs/engine.md."""
