"""Shared fixtures: a counting backbone, a tiny image folder, an isolated cache directory."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import featx


class CountingTextBackbone(featx.Backbone):
    """Deterministic text embedding (a hash of the words) that counts every sample it embeds."""

    modality = "text"

    def __init__(self, dim: int = 8, salt: str = "v1") -> None:
        self.name, self.dim, self.salt = "test/counting", dim, salt
        self.calls = 0
        self.embedded: list[str] = []

    def fingerprint(self) -> str:
        return featx.digest("test/counting", self.dim, self.salt)

    def embed_batch(self, items):
        self.calls += 1
        self.embedded.extend(items)
        rows = []
        for text in items:
            seed = int.from_bytes(hashlib.sha256((self.salt + text).encode()).digest()[:4], "little")
            rows.append(np.random.default_rng(seed).standard_normal(self.dim))
        return np.asarray(rows, dtype=np.float32)


@pytest.fixture
def counting():
    return CountingTextBackbone()


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


@pytest.fixture
def image_folder(tmp_path):
    """root/<class>/*.png: 'red' and 'blue' images, 6 each, visibly different colours."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for label, channel in (("red", 0), ("blue", 2)):
        (root / label).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 60, size=(20, 20, 3), dtype=np.uint8)
            pixels[..., channel] = rng.integers(180, 255, size=(20, 20), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


WORDS = "the a cat dog sat on mat stock market fell rose sharply today quietly house big small".split()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A tiny random BERT + word-level tokenizer saved with save_pretrained (loaded like any local model)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS))
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    return path


NO_TRAINING_STACK = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm", "transformers", "sklearn", "h5py", "skada"):
            raise ModuleNotFoundError(f"{name} is blocked in this test", name=name)  # as if not installed
sys.meta_path.insert(0, Blocker())
"""


def without_training_stack(folder) -> dict:
    """Environment variables under which a subprocess cannot import featx's training stack."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (Path(folder) / "sitecustomize.py").write_text(NO_TRAINING_STACK)
    env = {"PYTHONPATH": os.pathsep.join([str(folder), str(Path(featx.__file__).parent.parent)])}
    check = subprocess.run([sys.executable, "-c", "import torch"], env={**os.environ, **env}, capture_output=True,
                           text=True)
    assert "blocked in this test" in check.stderr  # the blocker works
    return env
