"""Data: LAMA-CKL-schema pairs, validation, the toy task, tokenisation and collation."""

from taalm_dist.data.lama_ckl import LoadReport, Pair, load_pairs, write_pairs
from taalm_dist.data.tokenize import TokenizedPair, collate, pad_batch, tokenize_pair
from taalm_dist.data.toy import toy_rows

__all__ = ["LoadReport", "Pair", "TokenizedPair", "collate", "load_pairs", "pad_batch", "tokenize_pair", "toy_rows", "write_pairs"]
