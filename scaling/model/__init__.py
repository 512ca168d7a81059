"""Model: the dense decoder (``transformer``), mixture-of-experts blocks (``moe``) and size presets."""

from scaling.model.transformer import Transformer, compute_dtype, count_model_params

__all__ = ["Transformer", "compute_dtype", "count_model_params"]
