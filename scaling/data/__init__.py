"""Data: tokenizers, corpora (stdlib, local files, synthetic Markov chain) and deterministic token streams."""

from scaling.data.dataset import SyntheticMarkov, TokenDataset, build_dataset, unigram_entropy

__all__ = ["SyntheticMarkov", "TokenDataset", "build_dataset", "unigram_entropy"]
