"""Autoencoders for latent diffusion: the own frame autoencoder's shapes, `train-autoencoder` through the CLI (exact
resume, the saved folder, refusing to overwrite), frozen diffusers AutoencoderKL / AutoencoderTiny from local folders,
and the one-line errors."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from config import AutoencoderConfig, ConfigError
from conftest import in_process, sets
from methods.run_config import load_config
from models.autoencoder import FrameAutoencoder, load_autoencoder
from models.discriminator import PatchDiscriminator, hinge_loss
from utils.errors import UserError


@pytest.mark.parametrize("down", [4, 8])
def test_encode_decode_shapes_and_hash(down):
    torch.manual_seed(0)
    model = FrameAutoencoder(down=down, latent_channels=3, width=16).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = model.encode(x)
    assert z.shape == (2, 3, 32 // down, 32 // down) and (model.down, model.latent_channels) == (down, 3)
    assert model.decode(z).shape == (2, 3, 32, 32)
    with torch.no_grad():
        out = model(x, generator=torch.Generator().manual_seed(0))
    assert out["recon"].shape == x.shape and out["kl"].ndim == 0 and float(out["kl"]) >= 0
    assert torch.equal(model.encode(x), out["mean"])  # encode is the posterior mean, no sampling
    key = model.content_hash()
    assert key == model.content_hash()
    with torch.no_grad():
        model.decoder.conv_out.bias[0] += 1e-6
    assert model.content_hash() != key


def test_frame_pairs_are_stacked_and_split_in_order():
    """time_down 2: frames 2k and 2k+1 go in as one 6-channel group (training draws them in the order encoding stacks
    them) and one latent frame decodes to the pair; a frame autoencoder's config and hash do not name time_down."""
    from data.latents import per_frame, split_frames
    from methods.training.autoencoder import frames_of

    torch.manual_seed(0)
    clips = torch.randn(2, 3, 6, 8, 8)  # (B, C, T, H, W)
    groups = per_frame(lambda g: g, clips, group=2)  # (2, 6, 3, 8, 8): channels frame by frame
    assert torch.equal(groups[1, :3, 2], clips[1, :, 4]) and torch.equal(groups[1, 3:, 2], clips[1, :, 5])
    assert torch.equal(per_frame(lambda g: g, groups, split=2), clips)

    class Clips:  # a split's uint8 clips (N, T, H, W, 3), as SignDataset holds them
        clips = torch.arange(3 * 4 * 2 * 2 * 3, dtype=torch.uint8).reshape(3, 4, 2, 2, 3)
    drawn = frames_of(Clips, torch.tensor([5, 0]), group=2)  # clip 2's second pair, clip 0's first
    pixels = Clips.clips.permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (N, 3, T, H, W)
    assert torch.equal(drawn, per_frame(lambda g: g, pixels, group=2)[[2, 0], :, [1, 0]])
    assert torch.equal(split_frames(drawn, 2)[1], pixels[2, :, 3])

    pair = FrameAutoencoder(4, 8, 16, time_down=2).eval()
    z = pair.encode(torch.rand(5, 6, 16, 16) * 2 - 1)
    assert z.shape == (5, 8, 4, 4) and pair.decode(z).shape == (5, 6, 16, 16)
    assert pair.config()["time_down"] == 2 and "time_down" not in FrameAutoencoder(4, 4, 16).config()


def ae_overrides(tmp_path, data_dir, steps=4, **extra):
    values = {"data.data_dir": data_dir, "data.image_size": 16, "data.num_frames": 4, "data.val_fraction": 0.1,
              "data.cache_dir": tmp_path.parent / "ae_cache", "train.exp_name": "ae",
              "train.checkpoint_dir": tmp_path / "checkpoints", "train.log_dir": tmp_path / "logs",
              "train.checkpoint_every": 2, "autoencoder.steps": steps, "autoencoder.batch_frames": 4,
              "autoencoder.width": 16, "autoencoder.crop": 8, "autoencoder.latent_noise": 0.1,
              "autoencoder.equivariance_weight": 0.5, "autoencoder.decoder_steps": 2, **extra}
    return [f"{k}={v}" for k, v in values.items()]


def test_train_resume_exactly_and_load(tmp_path, synth_dir):
    from methods.training.autoencoder import train_autoencoder

    whole, split = tmp_path / "whole", tmp_path / "split"
    done = in_process("train-autoencoder", *sets(ae_overrides(whole, synth_dir)))
    assert done.returncode == 0, done.stderr[-2000:]
    folder = done.stdout.strip().splitlines()[-1]
    assert folder == str(whole / "checkpoints" / "ae-autoencoder" / "model")
    assert "PSNR" in done.stderr and "autoencoder.path=" in done.stderr
    assert os.path.getsize(whole / "checkpoints" / "ae-autoencoder" / "reconstruction.png") > 0
    assert any(n.startswith("events") for _, _, names in os.walk(whole / "logs" / "ae-autoencoder") for n in names)
    state = torch.load(whole / "checkpoints" / "ae-autoencoder" / "latest.pt", weights_only=True)
    assert state["step"] == 6  # 4 joint steps, then 2 of the decoder alone

    # the same run stopped at step 2, then continued by the CLI, ends with the same weights, bit for bit
    split_sets = ae_overrides(split, synth_dir, **{"train.tensorboard": False})
    stopped = train_autoencoder(load_config("demo", split_sets), quiet=True, stop_at=2)
    assert stopped["stopped"] and stopped["step"] == 2
    assert not os.path.exists(split / "checkpoints" / "ae-autoencoder" / "model")
    resumed = in_process("train-autoencoder", "--resume", *sets(split_sets))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr and "at step 2" in resumed.stderr
    a, b = load_file(os.path.join(folder, "model.safetensors")), load_file(resumed.stdout.strip().splitlines()[-1]
                                                                             + "/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the folder loads, frozen, with the final weights and the scale measured on the val latents
    model = load_autoencoder(AutoencoderConfig(kind="own", path=folder))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    meta = json.load(open(os.path.join(folder, "config.json")))
    assert model.scaling_factor == pytest.approx(1 / meta["latent_std"])
    reference = FrameAutoencoder(4, 4, 16)
    reference.load_state_dict(state["model"])
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.encode(x), reference.encode(x))
        assert torch.equal(model.decode(model.encode(x)), reference.decode(reference.encode(x)))
    assert model.content_hash() == load_autoencoder(AutoencoderConfig(kind="own", path=folder)).content_hash()

    again = in_process("train-autoencoder", *sets(ae_overrides(whole, synth_dir)))
    assert again.returncode == 2 and "already holds an autoencoder run" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_frame_pair_autoencoder_trains_and_loads(tmp_path, synth_dir):
    done = in_process("train-autoencoder", *sets(ae_overrides(tmp_path, synth_dir, steps=2, **{
        "autoencoder.time_down": 2, "autoencoder.latent_channels": 8, "autoencoder.decoder_steps": 1,
        "train.tensorboard": False})))
    assert done.returncode == 0, done.stderr[-2000:]
    folder = done.stdout.strip().splitlines()[-1]
    model = load_autoencoder(AutoencoderConfig(kind="own", path=folder))
    assert (model.time_down, model.latent_channels) == (2, 8)
    assert json.load(open(os.path.join(folder, "config.json")))["time_down"] == 2


def test_decoder_steps_leave_the_encoder_and_so_the_latents(tmp_path, synth_dir):
    from methods.training.autoencoder import train_autoencoder

    cfg = load_config("demo", ae_overrides(tmp_path, synth_dir, steps=3, **{"train.tensorboard": False,
                                                                            "autoencoder.decoder_steps": 3}))
    assert train_autoencoder(cfg, quiet=True, stop_at=3)["step"] == 3
    before = torch.load(tmp_path / "checkpoints" / "ae-autoencoder" / "latest.pt", weights_only=True)["model"]
    done = train_autoencoder(cfg, resume=torch.load(tmp_path / "checkpoints" / "ae-autoencoder" / "latest.pt",
                                                    weights_only=True), quiet=True)
    assert done["step"] == 6
    after = load_file(os.path.join(done["path"], "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))


def test_adversarial_decoder_steps_resume_exactly_and_leave_the_encoder(tmp_path, synth_dir):
    from methods.training.autoencoder import train_autoencoder

    def run(name, weight, stop_at=None, resume=False):
        cfg = load_config("demo", ae_overrides(tmp_path / name, synth_dir, steps=3, **{
            "train.tensorboard": False, "autoencoder.decoder_steps": 3, "autoencoder.crop": 16,
            "autoencoder.adversarial_weight": weight}))
        latest = tmp_path / name / "checkpoints" / "ae-autoencoder" / "latest.pt"
        state = torch.load(latest, weights_only=True) if resume else None
        done = train_autoencoder(cfg, resume=state, quiet=True, stop_at=stop_at)
        return done, torch.load(latest, weights_only=True)

    whole, state = run("whole", 0.5)
    plain, plain_state = run("plain", 0.0)
    assert "discriminator" in state and "discriminator" not in plain_state
    a = load_file(os.path.join(whole["path"], "model.safetensors"))
    b = load_file(os.path.join(plain["path"], "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("encoder."))  # the same encoder, the same latents
    assert not all(torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(load_config("demo").train.seed + 1)  # as the run built it
        fresh = PatchDiscriminator().state_dict()
    assert fresh.keys() == state["discriminator"].keys()
    assert not torch.equal(state["discriminator"]["body.0.weight"], fresh["body.0.weight"])  # it trained

    assert run("split", 0.5, stop_at=4)[0]["stopped"]  # stopped after one adversarial step, then continued
    split, split_state = run("split", 0.5, resume=True)
    c = load_file(os.path.join(split["path"], "model.safetensors"))
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert all(torch.equal(state["discriminator"][k], split_state["discriminator"][k]) for k in fresh)
    with pytest.raises(ConfigError, match="adversarial_weight"):
        load_config("demo", ae_overrides(tmp_path, synth_dir, **{"autoencoder.adversarial_weight": 0.5}))  # 8-px crops


def test_patch_discriminator_shapes_and_hinge_loss():
    frames = torch.rand(2, 6, 32, 32) * 2 - 1  # two frame pairs, 32-pixel crops as in the real preset
    assert PatchDiscriminator(frames=2)(frames).shape == (2, 1, 6, 6)
    real, decoded = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_loss(real, decoded).item() == pytest.approx(0.25 + 0.5)  # (0 + 0.5) / 2 + (0 + 1) / 2


def test_crops_sit_on_the_latent_grid():
    from methods.training.autoencoder import random_crops

    frames = torch.arange(50 * 3 * 16 * 16, dtype=torch.float64).reshape(50, 3, 16, 16)
    crops = random_crops(frames, 8, 4, torch.Generator().manual_seed(0))
    assert crops.shape == (50, 3, 8, 8)
    first = crops[:, 0, 0, 0].long() % 256  # the top-left pixel's index in its frame: y * 16 + x
    ys, xs = first // 16, first % 16
    assert set(ys.tolist()) == {0, 4, 8} and set(xs.tolist()) == {0, 4, 8}  # every grid corner, nothing between
    for n in range(50):
        assert torch.equal(crops[n], frames[n, :, ys[n]:ys[n] + 8, xs[n]:xs[n] + 8])


def test_latent_noise_is_relative_to_the_latents():
    torch.manual_seed(0)
    model = FrameAutoencoder(4, 4, 16)
    model.decoder = torch.nn.Identity()  # recon = the decoded z itself
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    for gain in (1.0, 100.0):  # latents 100x larger get 100x more noise: the encoder cannot outgrow it
        with torch.no_grad():
            model.encoder.conv_out.weight[:4] *= gain  # the posterior means' half of the head
            clean = model(x, generator=torch.Generator().manual_seed(1))
            noisy = model(x, generator=torch.Generator().manual_seed(1), latent_noise=0.5)
        added = noisy["recon"] - clean["recon"]  # the same posterior sample: only the extra noise differs
        assert float(added.std() / noisy["mean"].std()) == pytest.approx(0.5, rel=0.1)  # 2048 draws: ~2% spread


def test_decoder_noise_levels_one_or_spread():
    """The decoder-only steps' noise: decoder_noise x the latents' spread for every latent, or with a spread a level
    per latent drawn from [decoder_noise - spread, decoder_noise]."""
    from types import SimpleNamespace

    from methods.training.autoencoder import AutoencoderRun

    torch.manual_seed(0)
    model = FrameAutoencoder(4, 4, 16)
    model.decoder = torch.nn.Identity()  # recon = the noisy latents themselves
    x = torch.rand(64, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        mean = model.posterior(x)[0]

    def levels(spread):  # each latent's noise std (256 values each) in units of the latents' spread
        run = SimpleNamespace(model=model, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            recon = AutoencoderRun.decoder_pass(run, x, 0.8, spread)["recon"]
        return ((recon - mean) / mean.std()).flatten(1).std(dim=1)

    one, half, whole = levels(0.0), levels(0.4), levels(0.8)
    assert 0.7 < float(one.min()) and float(one.max()) < 0.9  # 0.8 each (a 256-value std: ~4% spread)
    assert 0.35 < float(half.min()) < 0.45 and 0.75 < float(half.max()) < 0.9 and 0.55 < float(half.mean()) < 0.65
    assert float(whole.min()) < 0.05 and float(whole.max()) > 0.7 and 0.3 < float(whole.mean()) < 0.5
    with pytest.raises(ConfigError, match="decoder_noise_spread"):
        load_config("real", ["autoencoder.decoder_noise_spread=1.5"])


def test_an_empty_path_is_this_experiments_autoencoder(tmp_path, synth_dir):
    cfg = load_config("real", [f"data.data_dir={synth_dir}", f"train.checkpoint_dir={tmp_path}"])
    assert cfg.autoencoder.kind == "own"
    assert cfg.autoencoder.path == os.path.join(str(tmp_path), cfg.train.exp_name + "-autoencoder", "model")
    assert load_config("real", [f"data.data_dir={synth_dir}", "autoencoder.path=elsewhere"]).autoencoder.path == \
        "elsewhere"
    assert load_config("real", ["autoencoder.kind=none"]).autoencoder.path == ""
    done = in_process("train", "--preset", "real", *sets([
        f"data.data_dir={synth_dir}", f"train.checkpoint_dir={tmp_path}", "text.encoder=all-MiniLM-L6-v2"]))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "no autoencoder at" in done.stderr and "train-autoencoder" in done.stderr


def test_diffusers_autoencoders_from_local_folders(tmp_path):
    from diffusers import AutoencoderKL, AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, layers_per_block=1,
                  sample_size=16, scaling_factor=0.25).save_pretrained(tmp_path / "kl")
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
                    num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(1, 1, 1), latent_channels=4,
                    scaling_factor=1.0).save_pretrained(tmp_path / "tiny")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    for kind, down, scale in (("kl", 2, 0.25), ("tiny", 4, 1.0)):
        model = load_autoencoder(AutoencoderConfig(kind=kind, path=str(tmp_path / kind)))
        assert (model.down, model.latent_channels, model.scaling_factor) == (down, 4, scale)
        assert not any(p.requires_grad for p in model.parameters())
        with torch.no_grad():
            z = model.encode(x)
            assert z.shape == (2, 4, 16 // down, 16 // down)
            assert model.decode(z).shape == (2, 3, 16, 16)
        again = load_autoencoder(AutoencoderConfig(kind=kind, path=str(tmp_path / kind)))
        assert model.content_hash() == again.content_hash()
    assert load_autoencoder(AutoencoderConfig(kind="none")) is None


def test_missing_autoencoders_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        load_autoencoder(AutoencoderConfig(kind="kl", path="no-such-org/no-such-vae"))
    assert "\n" not in str(err.value) and "offline" in str(err.value) and "--local-dir" in str(err.value)
    with pytest.raises(UserError) as err:
        load_autoencoder(AutoencoderConfig(kind="own", path=str(tmp_path / "nothing")))
    assert "\n" not in str(err.value) and "train-autoencoder" in str(err.value)
    with pytest.raises(ConfigError, match="autoencoder.kind='vae' must be one of none, own, kl, tiny"):
        load_config("demo", ["autoencoder.kind=vae"])
    with pytest.raises(ConfigError, match="autoencoder.down=3 must be 4 or 8"):
        load_config("demo", ["autoencoder.down=3"])


def test_hub_names_are_fetched_when_online(monkeypatch):
    import diffusers

    from models.autoencoder import load_diffusers

    calls = []

    def from_pretrained(name, **kwargs):
        calls.append((name, kwargs))
        if kwargs.get("local_files_only"):
            raise OSError("not in the local cache")
        return "downloaded"

    monkeypatch.setattr(diffusers.AutoencoderTiny, "from_pretrained", from_pretrained)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert load_diffusers("tiny", "org/vae") == "downloaded"
    assert calls == [("org/vae", {"local_files_only": True}), ("org/vae", {})]
