"""Fusion of modality tokens into one pooled vector: cross-attention (default) or a mean-pool baseline."""
from fusion.common import FUSIONS, Fused, Fusion, register_fusion
from fusion.cross_attention import CrossAttentionFusion
from fusion.mean import MeanFusion

__all__ = ["FUSIONS", "CrossAttentionFusion", "Fused", "Fusion", "MeanFusion", "register_fusion"]
