"""Built-in plugin: BERT-style text encoders from a local folder, as ``"hf/<model dir>"``.

Options: ``pooling`` (``"mean"`` over non-padding tokens, or ``"cls"``), ``layers`` (hidden-state
indices such as ``[-1, -2]`` or one int, concatenated, from one forward pass), ``max_length`` (truncation),
``normalize`` (L2 per layer), ``precision``.  Texts are tokenised once, sorted by token length and
batched with dynamic padding; the output keeps the input order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BadInputError, UnknownBackboneError
from ..hookspecs import hookimpl
from .._fs import digest, file_digest
from .base import TorchBackbone, check_flag, layer_list

ADAPTER_VERSION = 1
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "sentencepiece.bpe.model", "spiece.model", "merges.txt", "vocab.json")


class HFBackbone(TorchBackbone):
    """A transformers encoder loaded with ``from_pretrained(model_dir)``, offline."""

    modality = "text"
    default_batch_size = 32

    def __init__(self, model_dir: str | os.PathLike, *, pooling: str = "mean", layers: Sequence[int] | None = None,
                 max_length: int | None = None, normalize: bool = False, device: str = "auto",
                 precision: str = "fp32", name: str | None = None) -> None:
        super().__init__(device=device, precision=precision)
        self.model_dir = Path(model_dir)
        config_path = self.model_dir / "config.json"
        if not config_path.is_file():
            raise UnknownBackboneError(
                f"hf/{model_dir}: no model folder with a config.json there. Only local folders (saved with "
                f"save_pretrained) or names registered by plugins work offline; see `featx backbones 'hf/*'`"
            )
        self.name = name or f"hf/{model_dir}"
        if pooling not in ("mean", "cls"):
            raise BadInputError(f"{self.name}: pooling={pooling!r}; use 'mean' or 'cls'")
        self.config = json.loads(config_path.read_text())
        self.hidden = int(self.config.get("hidden_size") or self.config.get("d_model") or self.config["dim"])
        self.n_layers = int(self.config.get("num_hidden_layers") or self.config.get("n_layers") or 0)
        self.layers = layer_list(self.name, layers)
        if self.layers is not None and any(not -(self.n_layers + 1) <= i <= self.n_layers for i in self.layers):
            raise BadInputError(f"{self.name}: layers={self.layers} out of range for {self.n_layers} layers "
                                f"(hidden states 0..{self.n_layers}, or negative)")
        positions = int(self.config.get("max_position_embeddings") or 512)
        if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1):
            raise BadInputError(f"{self.name}: max_length={max_length!r} must be a positive int (tokens)")
        self.pooling = pooling
        self.max_length = int(max_length or min(positions, 512))
        self.normalize = check_flag(self.name, "normalize", normalize)
        self._tokenizer = None

    @property
    def dim(self) -> int:
        return self.hidden * (len(self.layers) if self.layers else 1)

    @property
    def views(self) -> dict[str, slice]:
        if not self.layers:
            return {"all": slice(0, self.hidden)}
        return {f"layer{i}": slice(k * self.hidden, (k + 1) * self.hidden) for k, i in enumerate(self.layers)}

    @property
    def options(self) -> dict[str, Any]:
        """Pooling, layers, token truncation length and L2 normalisation."""
        return {"pooling": self.pooling, "layers": self.layers, "max_length": self.max_length,
                "normalize": self.normalize}

    def fingerprint(self) -> str:
        files = sorted(p for p in self.model_dir.iterdir()
                       if p.name in TOKENIZER_FILES or p.name == "config.json" or p.suffix in (".safetensors", ".bin"))
        return digest("hf", ADAPTER_VERSION, {p.name: file_digest(p) for p in files}, self.pooling, self.layers,
                      self.max_length, self.normalize, self.precision)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        return self._tokenizer

    def build_model(self):
        from transformers import AutoModel
        from transformers.utils import logging

        logging.disable_progress_bar()  # featx reports its own progress
        return AutoModel.from_pretrained(self.model_dir, local_files_only=True)

    def forward(self, input_ids, attention_mask):
        import torch

        wants_layers = self.layers is not None
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=wants_layers)
        states = [out.hidden_states[i] for i in self.layers] if wants_layers else [out.last_hidden_state]
        mask = attention_mask.unsqueeze(-1).to(states[0].dtype)
        pooled = []
        for h in states:
            v = h[:, 0] if self.pooling == "cls" else (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            v = v.float()
            pooled.append(torch.nn.functional.normalize(v, dim=1) if self.normalize else v)
        return torch.cat(pooled, dim=1)

    def embed_chunk(self, items: Sequence[str], batch_size: int) -> np.ndarray:
        """Tokenise once, sort by token length, run dynamic-padded batches, restore the input order."""
        import torch

        encoded = self.tokenizer(list(items), truncation=True, max_length=self.max_length)["input_ids"]
        order = np.argsort([-len(ids) for ids in encoded], kind="stable")
        out = np.empty((len(items), self.dim), dtype=np.float32)
        pad_id = self.tokenizer.pad_token_id or 0
        for lo in range(0, len(order), batch_size):
            idx = order[lo:lo + batch_size]
            width = len(encoded[idx[0]])
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, :len(encoded[i])] = torch.as_tensor(encoded[i])
                mask[row, :len(encoded[i])] = 1
            out[idx] = self.run(ids, mask)
        return out

    def embed_batch(self, items: Sequence[str]) -> np.ndarray:
        return self.embed_many(items, self.default_batch_size)


def hf_factory(rest: str, **options: Any) -> HFBackbone:
    """``hf/<local model dir>`` → ``HFBackbone(dir, **options)``."""
    return HFBackbone(rest, **options)


@hookimpl
def featx_register_backbones(register):
    register("hf/*", hf_factory, description="a local transformers encoder folder (BERT-style), mean/CLS pooling")
