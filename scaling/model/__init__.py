"""Model: layers (``layers``), mixture-of-experts blocks (``moe``), the decoder (``transformer``), its config
(``config``) and size presets (``presets``). The shape-letter key and logical axis names are in ``axes``.

Attributes are loaded on first use, so importing ``scaling.model.config`` does not import JAX.
"""

from typing import Any

__all__ = ["Transformer", "compute_dtype", "count_model_params"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from scaling.model import transformer

        return getattr(transformer, name)
    raise AttributeError(f"module 'scaling.model' has no attribute {name!r}")
