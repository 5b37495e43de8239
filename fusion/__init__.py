"""Fusion of modality tokens into one pooled vector: cross-attention (default) or a mean-pool baseline."""
from fusion.cross_attention import CrossAttentionFusion
from fusion.mean import MeanFusion
from fusion.common import Fused

FUSIONS = {"cross-attention": CrossAttentionFusion, "mean": MeanFusion}

__all__ = ["FUSIONS", "CrossAttentionFusion", "Fused", "MeanFusion"]
