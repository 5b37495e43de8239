"""Task families: heads with masked losses, metrics and splits."""
from tasks.heads import HEADS, MultiLabelHead, RegressionHead
from tasks.metrics import METRICS, score
from tasks.ner import READERS
from tasks.splits import SPLITS, random_split, scaffold_split

__all__ = ["HEADS", "METRICS", "READERS", "SPLITS", "MultiLabelHead", "RegressionHead", "random_split", "scaffold_split", "score"]
