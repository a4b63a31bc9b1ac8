"""Data: the fact world, TOFU-format splits and files, real-data loaders and the BPE tokenizer."""

from .factworld import ATTRIBUTES, FactWorld, QAExample, generate_world
from .loaders import DataError, export_tofu, export_tofu_folder, load_hf_qa, load_qa_file
from .tokenizer import qa_texts, train_bpe_tokenizer

__all__ = [
    "ATTRIBUTES",
    "DataError",
    "FactWorld",
    "QAExample",
    "export_tofu",
    "export_tofu_folder",
    "generate_world",
    "load_hf_qa",
    "load_qa_file",
    "qa_texts",
    "train_bpe_tokenizer",
]
