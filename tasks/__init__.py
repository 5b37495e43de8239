"""Task families: heads with masked losses, metrics and splits."""
from tasks.heads import HEADS, KINDS, Head, MultiLabelHead, RegressionHead, register_head
from tasks.images import read_image_table
from tasks.massbank import read_massbank
from tasks.metrics import METRICS, score
from tasks.ner import read_conll, read_standoff, read_tsv
from tasks.spectra import read_spectra_npz
from tasks.splits import GIVEN_SPLITS, SPLITS, column_split, file_split, random_split, scaffold_split

# Data files the registry can name by ``reader:`` beyond a plain table (see zoo.tables.read_dataset).
READERS = {"conll": read_conll, "standoff": read_standoff, "tsv": read_tsv, "spectra-npz": read_spectra_npz,
           "massbank-jsonl": read_massbank, "image-table": read_image_table}

__all__ = ["GIVEN_SPLITS", "HEADS", "KINDS", "METRICS", "READERS", "SPLITS", "Head", "MultiLabelHead", "RegressionHead", "column_split",
           "file_split", "random_split", "register_head", "scaffold_split", "score"]
