"""ldisc: distributed pretraining of local discrimination (Chen et al., arXiv 2108.09440)."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_encoder", "pretrain", "__version__"]


def __getattr__(name: str):
    # lazy: `import ldisc` stays cheap (no torch import) for CLIs that do not need it
    if name == "load_encoder":
        from ldisc.model import load_encoder
        return load_encoder
    if name == "pretrain":
        from ldisc.train import pretrain
        return pretrain
    raise AttributeError(f"module 'ldisc' has no attribute {name!r}")
