"""Shared fixtures: a tiny random DistilBERT written locally, tiny synthetic data, and a tiny training config."""
import pytest
import torch

from config import build_config

TINY_WORDS = ["hello", "thank", "you", "yes", "no", "please", "help", "more", "stop", "go", "eat", "drink",
              "home", "friend", "love", "want", "good", "bad", "name", "what", "where", "sorry", "work", "learn"]


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """A random-init DistilBERT (dim 32, 1 layer) + WordPiece vocab saved with save_pretrained."""
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizer

    folder = tmp_path_factory.mktemp("tiny_distilbert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + TINY_WORDS + list("abcdefghijklmnopqrstuvwxyz")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    tokenizer = DistilBertTokenizer(vocab=str(vocab))  # transformers 5: vocab_file= is silently ignored
    assert len(tokenizer) == len(words)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=len(words), dim=32, n_layers=1, n_heads=2, hidden_dim=64,
                              max_position_embeddings=64)
    DistilBertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    from utils.synth import write_dataset

    folder = tmp_path_factory.mktemp("synth")
    write_dataset(str(folder), 14, seed=3, size=32, num_frames=8)
    return str(folder)


def tiny_overrides(tmp_path, data_dir, encoder, **extra):
    """--set strings for a seconds-long CPU run with every output inside tmp_path."""
    values = {
        "data.data_dir": data_dir, "data.image_size": 16, "data.num_frames": 4, "data.val_fraction": 0.1,
        "data.cache_dir": tmp_path / "cache", "data.synth_if_missing": False,
        "text.encoder": encoder, "text.max_length": 8, "model.arch": "DiT-Test/4", "model.frame_chunk_size": 2,
        "diffusion.sample_steps": 3, "train.exp_name": "tiny", "train.batch_size": 4, "train.max_steps": 6,
        "train.warmup_steps": 2, "train.lr": 1e-3, "train.ema_decay": 0.9, "train.log_every": 1,
        "train.sample_every": 0, "train.checkpoint_every": 3, "train.sample_prompts": "hello,thank you",
        "train.checkpoint_dir": tmp_path / "checkpoints", "train.log_dir": tmp_path / "logs",
        "train.sample_dir": tmp_path / "samples",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture
def tiny_config(tmp_path, synth_dir, tiny_encoder):
    def make(**extra):
        return build_config("demo", tiny_overrides(tmp_path, synth_dir, tiny_encoder, **extra))
    return make
