"""Frozen text encoder: local loading, masks and pooling, the embedding cache, offline and checksum errors."""
import pytest
import torch

import models.text_encoder as te
from models.text_encoder import FrozenTextEncoder, embed_captions, resolve_encoder
from tolerance import assert_close_scaled
from utils.errors import UserError


def test_tiny_distilbert_embeddings_masks_and_mean_pooling(tiny_encoder):
    enc = FrozenTextEncoder(tiny_encoder, max_length=8)
    emb = enc.encode(["hello", "thank you", "yes no please"])
    assert enc.dim == 32
    # [CLS] w [SEP]: 3, 4 and 5 tokens; padded to the longest.
    assert emb.tokens.shape == (3, 5, 32) and emb.mask.sum(1).tolist() == [3, 4, 5]
    assert torch.all(emb.tokens[0, 3:] == 0)
    assert_close_scaled(emb.pooled[1], emb.tokens[1, :4].mean(0), terms=4)  # the mean of 4 tokens
    assert not any(p.requires_grad for p in enc.model.parameters())
    assert not torch.allclose(emb.pooled[0], emb.pooled[1])


def test_long_captions_are_truncated_with_one_warning(tiny_encoder, capsys):
    emb = FrozenTextEncoder(tiny_encoder, max_length=4).encode(["yes no please help more", "hello"])
    assert emb.tokens.shape[1] == 4
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "1 caption(s)" in err
    assert "'yes no please help more' (7 tokens)" in err and "hello" not in err  # [CLS] 5 words [SEP]


def test_embeddings_are_cached_on_disk(tiny_encoder, tmp_path, monkeypatch):
    first = embed_captions(tiny_encoder, 8, ["hello", "yes"], str(tmp_path))

    def boom(*args, **kwargs):
        raise AssertionError("the encoder must not run again")

    monkeypatch.setattr(te, "FrozenTextEncoder", boom)
    second = embed_captions(tiny_encoder, 8, ["hello", "yes"], str(tmp_path))
    assert torch.equal(first.tokens, second.tokens) and torch.equal(first.pooled, second.pooled)
    with pytest.raises(AssertionError):  # another caption list is another cache entry
        embed_captions(tiny_encoder, 8, ["hello", "no"], str(tmp_path))


def test_packaged_minilm_resolves_offline_and_checks_its_sha256(monkeypatch):
    path = resolve_encoder("all-MiniLM-L6-v2")
    assert path.endswith("model")
    package, folder, _ = te.PACKAGED_ENCODERS["all-MiniLM-L6-v2"]
    monkeypatch.setitem(te.PACKAGED_ENCODERS, "all-MiniLM-L6-v2", (package, folder, "0" * 64))
    with pytest.raises(UserError, match="sha256"):
        resolve_encoder("all-MiniLM-L6-v2")


def test_missing_encoder_offline_is_a_one_line_user_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        FrozenTextEncoder("no-such-org/no-such-encoder", 8)
    assert "text.encoder" in str(err.value) and "\n" not in str(err.value)
