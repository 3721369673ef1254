"""Shared fixtures and helpers: a tiny random DistilBERT written locally, tiny synthetic data, a tiny training
config, the CLI as a subprocess, and a TinyFusion-format state dict."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from methods.run_config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
    from data.synth import write_dataset

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
        return load_config("demo", tiny_overrides(tmp_path, synth_dir, tiny_encoder, **extra))
    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, synth_dir, tiny_encoder):
    """(folder, final.pt) of a 4-step tiny run through the CLI, shared by the export and serve tests."""
    tmp = tmp_path_factory.mktemp("trained")
    done = run("train", *sets(tiny_overrides(tmp, synth_dir, tiny_encoder, **{"train.max_steps": 4})))
    assert done.returncode == 0, done.stderr[-2000:]
    return tmp, str(tmp / "checkpoints" / "tiny" / "final.pt")


def run(*args, cwd=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def in_process(*args, cwd=None) -> subprocess.CompletedProcess:
    """main.main(args) in this process, with run()'s result: the same code without a Python start-up (seconds each)."""
    import contextlib
    import io

    import main

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        os.chdir(cwd or here)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main.main([str(a) for a in args])
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(["main.py", *args], code, out.getvalue(), err.getvalue())


def sets(overrides):
    return [arg for item in overrides for arg in ("--set", item)]


def dit_pos_embed(dim: int, grid: int) -> np.ndarray:
    """facebookresearch/DiT's get_2d_sincos_pos_embed (numpy), re-typed here as an independent reference."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    g = np.stack(np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)), axis=0)
    return np.concatenate([one_d(dim // 2, g[0]), one_d(dim // 2, g[1])], axis=1).astype(np.float32)


def tinyfusion_state_dict(depth=2, hidden=32, patch=4, latent_grid=8, seed=0, num_classes=1000):
    """A state dict in exactly TinyFusion's key format and layout (learn_sigma: 8 outputs per latent pixel).

    Random values at a trained network's scale: weights N(0, 1/fan_in), biases N(0, 0.02^2).
    """
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 2500
        return torch.randn(*shape, generator=g) / math.sqrt(fan_in)
    sd = {"pos_embed": torch.from_numpy(dit_pos_embed(hidden, latent_grid // patch))[None],
          "x_embedder.proj.weight": r(hidden, 4, patch, patch), "x_embedder.proj.bias": r(hidden),
          "t_embedder.mlp.0.weight": r(hidden, 256), "t_embedder.mlp.0.bias": r(hidden),
          "t_embedder.mlp.2.weight": r(hidden, hidden), "t_embedder.mlp.2.bias": r(hidden),
          "y_embedder.embedding_table.weight": r(num_classes + 1, hidden)}
    for i in range(depth):
        for name, shape in [("attn.qkv", (3 * hidden, hidden)), ("attn.proj", (hidden, hidden)),
                            ("mlp.fc1", (4 * hidden, hidden)), ("mlp.fc2", (hidden, 4 * hidden)),
                            ("adaLN_modulation.1", (6 * hidden, hidden))]:
            sd[f"blocks.{i}.{name}.weight"], sd[f"blocks.{i}.{name}.bias"] = r(*shape), r(shape[0])
    sd["final_layer.linear.weight"], sd["final_layer.linear.bias"] = r(patch * patch * 8, hidden), r(patch ** 2 * 8)
    sd["final_layer.adaLN_modulation.1.weight"] = r(2 * hidden, hidden)
    sd["final_layer.adaLN_modulation.1.bias"] = r(2 * hidden)
    return sd
