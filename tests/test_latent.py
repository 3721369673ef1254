"""Latent diffusion end to end on a tiny own autoencoder (no downloads): the latent cache (encoded once, reused),
exact resume on latents, sampling decoded to GIFs through the CLI, an export carrying its autoencoder, and the latent
grid's config checks."""
import os

import pytest
import torch

from config import ConfigError
from conftest import in_process, sets, tiny_overrides
from methods.checkpoint import load_checkpoint
from methods.run_config import load_config
from methods.training.trainer import Trainer
from models.autoencoder import FrameAutoencoder


@pytest.fixture(scope="module")
def autoencoder_dir(tmp_path_factory):
    """A random own autoencoder (down 4, 4 channels) saved as train-autoencoder saves one; its latent head is widened
    from the near-zero init so the latents carry the frames."""
    torch.manual_seed(0)
    model = FrameAutoencoder(down=4, latent_channels=4, width=8)
    torch.nn.init.normal_(model.encoder.conv_out.weight, std=0.05)
    folder = tmp_path_factory.mktemp("autoencoder")
    model.save(str(folder))
    return str(folder)


@pytest.fixture
def encode_calls(monkeypatch):
    """Counts FrameAutoencoder.encode calls (each is one chunk of frames)."""
    calls = []
    original = FrameAutoencoder.encode

    def counted(self, frames):
        calls.append(len(frames))
        return original(self, frames)

    monkeypatch.setattr(FrameAutoencoder, "encode", counted)
    return calls


def latent_overrides(tmp_path, synth_dir, encoder, autoencoder_dir, **extra):
    return tiny_overrides(tmp_path, synth_dir, encoder, **{"autoencoder.kind": "own", "autoencoder.path": autoencoder_dir,
                                                           "train.max_steps": 4, "train.checkpoint_every": 2, **extra})


def gif_bytes(stdout: str) -> list[bytes]:
    paths = [line for line in stdout.split() if line.endswith(".gif")]
    assert paths, stdout
    return [open(p, "rb").read() for p in paths]


@pytest.mark.parametrize("arch", ["DiT-Test/4", "UNet3D-Test"])
def test_latent_train_resume_sample_export(tmp_path, synth_dir, tiny_encoder, autoencoder_dir, encode_calls, arch):
    over = latent_overrides(tmp_path, synth_dir, tiny_encoder, autoencoder_dir, **{"model.arch": arch})
    done = in_process("train", *sets(over))
    assert done.returncode == 0, done.stderr[-2000:]
    full = load_checkpoint(str(tmp_path / "checkpoints" / "tiny" / "final.pt"))
    assert encode_calls == [4] * full["num_clips"]  # each training clip (4 frames: one chunk) encoded once
    latent = full["latent"]
    assert latent["scale"] > 0 and isinstance(latent["autoencoder"], str)
    assert full["ema"]["final_layer.linear.weight" if arch.startswith("DiT") else "conv_out.weight"].shape[0] > 0
    assert os.listdir(tmp_path / "samples" / "tiny")  # the end-of-run sample GIFs went through the decoder

    # the same run stopped at step 2, continued by `train --resume`: the same weights, bit for bit, and no encoding
    encode_calls.clear()
    over2 = latent_overrides(tmp_path, synth_dir, tiny_encoder, autoencoder_dir,
                             **{"model.arch": arch, "train.exp_name": "tiny2"})
    first = Trainer(load_config("demo", over2), quiet=True)
    first.train(stop_at=2)
    assert first.interrupted and first.step == 2
    done = in_process("train", "--resume", *sets(over2))
    assert done.returncode == 0, done.stderr[-2000:]
    assert encode_calls == []  # the latent cache is reused by both starts
    resumed = load_checkpoint(str(tmp_path / "checkpoints" / "tiny2" / "final.pt"))
    assert resumed["latent"] == latent
    for key in ("model", "ema"):
        for name, tensor in full[key].items():
            assert torch.equal(tensor, resumed[key][name]), f"{key}.{name}"

    # sample from the checkpoint and from its export: the same GIF bytes; the export holds its autoencoder
    checkpoint = str(tmp_path / "checkpoints" / "tiny" / "final.pt")
    common = ["--text", "hello", "--num_samples", "1", "--seed", "3"]
    by_checkpoint = in_process("sample", "--checkpoint", checkpoint, *common, "--output_dir", tmp_path / "a")
    assert by_checkpoint.returncode == 0, by_checkpoint.stderr[-2000:]
    export_dir = tmp_path / "export"
    done = in_process("export", "--checkpoint", checkpoint, "--out", export_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(os.listdir(export_dir / "autoencoder")) == ["config.json", "model.safetensors"]
    assert "autoencoder" in (export_dir / "README.md").read_text()
    by_export = in_process("sample", "--model", export_dir, *common, "--output_dir", tmp_path / "b", cwd=tmp_path)
    assert by_export.returncode == 0, by_export.stderr[-2000:]
    assert gif_bytes(by_checkpoint.stdout) == gif_bytes(by_export.stdout)


def test_decoded_samples_are_frames_of_the_autoencoder(tmp_path, synth_dir, tiny_encoder, autoencoder_dir):
    """The pipeline's clips are the autoencoder's decoded latents at the data's size, not the model's latent grid."""
    from methods.pipeline import SignPipeline

    over = latent_overrides(tmp_path, synth_dir, tiny_encoder, autoencoder_dir, **{"train.max_steps": 2})
    assert in_process("train", *sets(over)).returncode == 0
    pipe = SignPipeline.from_pretrained(str(tmp_path / "checkpoints" / "tiny" / "final.pt"))
    assert pipe.model.in_channels == 4 and pipe.autoencoder is not None
    clips = pipe(["hello"], seed=0)
    assert clips.shape == (1, 4, 16, 16, 3)
    x = torch.zeros(1, 4, 4, 4, 4)  # the latents' mean everywhere: the decoder's image of the shift
    expected = pipe.autoencoder.decode(torch.full((4, 4, 4, 4), pipe.latent_norm.shift))
    assert torch.allclose(pipe.decode(x)[0].transpose(0, 1), expected, atol=1e-5)


@pytest.fixture(scope="module")
def pair_autoencoder_dir(tmp_path_factory):
    """A random own autoencoder of frame pairs (time_down 2, 8 channels): half the frames reach the denoiser."""
    torch.manual_seed(0)
    model = FrameAutoencoder(down=4, latent_channels=8, width=8, time_down=2)
    torch.nn.init.normal_(model.encoder.conv_out.weight, std=0.05)
    folder = tmp_path_factory.mktemp("pair_autoencoder")
    model.save(str(folder))
    return str(folder)


def test_frame_pair_latents_train_and_sample(tmp_path, synth_dir, tiny_encoder, pair_autoencoder_dir, encode_calls):
    """time_down 2: each clip's 4 frames are encoded as 2 pairs, the denoiser works on 2 latent frames, and samples
    decode to the data's 4 frames, pair by pair in order."""
    from methods.pipeline import SignPipeline

    over = latent_overrides(tmp_path, synth_dir, tiny_encoder, pair_autoencoder_dir, **{
        "train.max_steps": 2, "autoencoder.time_down": 2, "autoencoder.latent_channels": 8})
    done = in_process("train", *sets(over))
    assert done.returncode == 0, done.stderr[-2000:]
    full = load_checkpoint(str(tmp_path / "checkpoints" / "tiny" / "final.pt"))
    assert encode_calls == [2] * full["num_clips"]  # one call of 2 pairs per clip
    pipe = SignPipeline.from_pretrained(str(tmp_path / "checkpoints" / "tiny" / "final.pt"))
    assert pipe.model.in_channels == 8 and pipe.autoencoder.time_down == 2
    assert pipe(["hello"], seed=0).shape == (1, 4, 16, 16, 3)
    x = torch.randn(1, 8, 2, 4, 4)  # (B, C, T/2, h, w)
    pairs = pipe.autoencoder.decode(pipe.latent_norm.from_model(x)[0].transpose(0, 1))  # (2, 6, 16, 16)
    frames = pipe.decode(x)[0].transpose(0, 1)  # (4, 3, 16, 16)
    assert torch.allclose(frames, pairs.reshape(4, 3, 16, 16), atol=1e-5)

    odd = latent_overrides(tmp_path, synth_dir, tiny_encoder, pair_autoencoder_dir,
                           **{"autoencoder.latent_channels": 8, "train.exp_name": "single"})
    done = in_process("train", *sets(odd))  # the config says single frames, the folder holds a pair autoencoder
    assert done.returncode == 2 and "set autoencoder.time_down=2" in done.stderr, done.stderr


def test_latent_grid_must_fit_the_patch(tmp_path, synth_dir, tiny_encoder, autoencoder_dir):
    over = latent_overrides(tmp_path, synth_dir, tiny_encoder, autoencoder_dir, **{"autoencoder.down": 8})
    with pytest.raises(ConfigError, match="2x2 latent grid, which must be a multiple of 4"):
        load_config("demo", over)
    done = in_process("train", *sets(over))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_autoencoder_must_match_the_configured_latents(tmp_path, synth_dir, tiny_encoder, autoencoder_dir):
    over = latent_overrides(tmp_path, synth_dir, tiny_encoder, autoencoder_dir, **{"autoencoder.latent_channels": 8})
    done = in_process("train", *sets(over))
    assert done.returncode == 2 and "set autoencoder.latent_channels=4" in done.stderr, done.stderr


def test_evaluate_scores_real_clips_through_the_autoencoder(tmp_path, synth_dir, tiny_encoder, autoencoder_dir):
    """A latent model's evaluation also scores the real clips encoded and decoded (the latent space's ceiling): the
    frames are the autoencoder's own reconstructions, and the report's SSIM / PSNR are theirs against the real clips."""
    import json

    from dataset import SignDataset
    from methods.evaluation.captions import pick_captions
    from methods.evaluation.metrics import psnr, ssim
    from methods.pipeline import SignPipeline
    from utils.pixels import to_uint8, to_unit_range

    over = latent_overrides(tmp_path, synth_dir, tiny_encoder, autoencoder_dir, **{"train.max_steps": 2})
    assert in_process("train", *sets(over)).returncode == 0
    ckpt = str(tmp_path / "checkpoints" / "tiny" / "final.pt")
    pipe = SignPipeline.from_pretrained(ckpt, text_encoder=False)
    ds = SignDataset(pipe.cfg.data, "train", quiet=True)
    names, idx = pick_captions(ds, 3, 0)
    real = ds.clips[idx].numpy()  # (3, 4, 16, 16, 3)
    back = pipe.reconstruct(real)
    frames = to_unit_range(torch.from_numpy(real)).transpose(1, 2).flatten(0, 1)  # (3*4, 3, 16, 16)
    with torch.no_grad():
        expected = pipe.autoencoder.decode(pipe.autoencoder.encode(frames))  # (3*4, 3, 16, 16)
    expected = to_uint8(expected.view(3, 4, 3, 16, 16).transpose(1, 2))
    assert back.shape == real.shape and back.dtype == real.dtype
    assert abs(back.astype(int) - expected.astype(int)).max() <= 1  # the latent normalisation's round trip: float bits
    assert (back != real).any()

    done = in_process("train-evaluator", *sets(over + ["eval.evaluator_steps=2", "eval.evaluator_dim=8",
                                                       "eval.evaluator_render=false"]), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "report.json"
    done = in_process("evaluate", "--checkpoint", ckpt, "--split", "train", "--num_captions", "3", "--steps", "2",
                      "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    group = json.loads(out.read_text())["groups"]["train"]
    assert [row["caption"] for row in group["per_caption"]] == names
    assert group["reconstructed_psnr"] == pytest.approx(sum(psnr(b, r) for b, r in zip(back, real)) / 3, abs=0.05)
    assert group["reconstructed_ssim"] == pytest.approx(
        sum(float(ssim(b, r).mean()) for b, r in zip(back, real)) / 3, abs=2e-3)
    assert 0 <= group["reconstructed_r1"] <= 1 and "real clips through the autoencoder" in done.stderr


def test_decode_with_another_decoder_of_the_same_encoder(tmp_path, synth_dir, tiny_encoder, autoencoder_dir):
    """sample / evaluate --autoencoder: a folder whose encoder is the model's (the same encoder hash) decodes its
    latents with its own decoder and is named, not warned about; one whose encoder differs is warned about; a pixel
    model refuses the flag in one line."""
    import json

    from methods.pipeline import SignPipeline

    base = FrameAutoencoder.from_folder(autoencoder_dir)
    other_decoder, other_encoder = FrameAutoencoder.from_folder(autoencoder_dir), FrameAutoencoder.from_folder(
        autoencoder_dir)
    with torch.no_grad():
        other_decoder.decoder.conv_out.bias += 0.5
        other_encoder.encoder.conv_in.weight.mul_(1.01)
    assert other_decoder.encoder_hash() == base.encoder_hash() != other_encoder.encoder_hash()
    assert other_decoder.content_hash() != base.content_hash()
    other_decoder.save(str(tmp_path / "decoder2"))
    other_encoder.save(str(tmp_path / "encoder2"))

    over = latent_overrides(tmp_path, synth_dir, tiny_encoder, autoencoder_dir, **{"train.max_steps": 2})
    assert in_process("train", *sets(over)).returncode == 0
    ckpt = str(tmp_path / "checkpoints" / "tiny" / "final.pt")
    assert load_checkpoint(ckpt)["latent"]["encoder"] == base.encoder_hash()
    own = SignPipeline.from_pretrained(ckpt, text_encoder=False)
    swapped = SignPipeline.from_pretrained(ckpt, text_encoder=False, autoencoder=str(tmp_path / "decoder2"))
    x = torch.randn(1, 4, 4, 4, 4)  # (B, C, T, h, w): one latent clip, decoded by each
    with torch.no_grad():
        expected = other_decoder.decode(own.latent_norm.from_model(x)[0].transpose(0, 1))  # (T, 3, 16, 16)
    assert torch.allclose(swapped.decode(x)[0].transpose(0, 1), expected, atol=1e-5)
    assert not torch.allclose(own.decode(x), swapped.decode(x), atol=0.1)

    common = ["--text", "hello", "--seed", "3"]
    done = in_process("sample", "--checkpoint", ckpt, "--autoencoder", tmp_path / "decoder2", *common,
                      "--output_dir", tmp_path / "a")
    assert done.returncode == 0 and "another decoder" in done.stderr and "warning" not in done.stderr, done.stderr
    done = in_process("sample", "--checkpoint", ckpt, "--autoencoder", tmp_path / "encoder2", *common,
                      "--output_dir", tmp_path / "b")
    assert done.returncode == 0 and "warning: the autoencoder at" in done.stderr, done.stderr

    done = in_process("train-evaluator", *sets(over + ["eval.evaluator_steps=2", "eval.evaluator_dim=8",
                                                       "eval.evaluator_render=false"]), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "report.json"
    done = in_process("evaluate", "--checkpoint", ckpt, "--split", "train", "--num_captions", "3", "--steps", "2",
                      "--autoencoder", tmp_path / "decoder2", "--out", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(out.read_text())["autoencoder"] == str(tmp_path / "decoder2")

    pixel = tiny_overrides(tmp_path, synth_dir, tiny_encoder, **{"train.max_steps": 1, "train.exp_name": "pixel"})
    assert in_process("train", *sets(pixel)).returncode == 0
    done = in_process("sample", "--checkpoint", tmp_path / "checkpoints" / "pixel" / "final.pt", "--autoencoder",
                      tmp_path / "decoder2", *common)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "pixel model" in done.stderr
