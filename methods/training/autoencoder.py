"""`train-autoencoder`: the project's own frame autoencoder (models/autoencoder.py) trained on a data folder's frames.

Frames come from data.data_dir's clips as `train` decodes them (dataset.SignDataset: decoded once into the clip store,
at data.image_size): the train split trains, the val split scores. Each step draws autoencoder.batch_frames frame
groups (autoencoder.time_down consecutive frames: the 1st and 2nd, 3rd and 4th, ..., as the clips are encoded) at
random from one saved torch.Generator, which also draws the posterior samples, so `--resume` continues exactly.
Loss: L1 + autoencoder.ssim_weight x (1 - SSIM) + autoencoder.kl_weight x KL(posterior || N(0, I)); in the
decoder-only steps, + autoencoder.adversarial_weight x a patch discriminator's loss, the discriminator trained beside.

    checkpoints/<exp>-autoencoder/latest.pt            resumable state (state_dicts and primitives)
    checkpoints/<exp>-autoencoder/model/               model.safetensors + config.json: autoencoder.path
    checkpoints/<exp>-autoencoder/reconstruction.png   val frames (top) and their reconstructions (bottom)
    logs/<exp>-autoencoder/run-*/                      TensorBoard: loss terms, lr, val PSNR / SSIM, the strip
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from config import AUTOENCODER_SUFFIX, Config
from data.latents import group_frames, split_frames
from dataset import SignDataset
from methods.checkpoint import load_weights, read_state, rng_state, save_checkpoint, set_rng_state
from methods.training.experiment import ExperimentLock, remove_stale_temp_files
from methods.training.stop import StopRequest
from methods.training.tb_logger import new_run_dir
from models.autoencoder import FrameAutoencoder
from models.discriminator import PatchDiscriminator, hinge_loss
from schedulers import lr_factor
from utils.atomic import atomic_write
from utils.device import select_device
from utils.errors import UserError
from utils.folders import check_output_dirs
from utils.images import frame_strip, png_bytes, upscale
from utils.pixels import to_uint8, to_unit_range
from utils.ssim import ssim

SUFFIX = AUTOENCODER_SUFFIX
MAX_WARMUP = 50  # linear warmup steps (a tenth of a shorter run)
DECODER_LR_SCALE = 0.25  # peak learning rate of the decoder-only steps, as a share of autoencoder.learning_rate
DISCRIMINATOR_BETAS = (0.5, 0.9)  # Adam betas of GAN training (taming-transformers, SD's autoencoder): less momentum
VAL_FRAMES = 256  # val frames scored at the end, evenly over the split (a quick 64 at each checkpoint)
STRIP_FRAMES = 8  # frames on the real-vs-reconstructed strip
STATE_KIND = "text2sign-autoencoder-run"


def frames_of(data: SignDataset, index: torch.Tensor, group: int = 1) -> torch.Tensor:
    """Frame groups number `index` (flat over clip x group) of a split, each `group` consecutive frames stacked on the
    channels as encoding stacks them (data.latents.group_frames): float (N, 3 x group, H, W) in [-1, 1]."""
    per_clip = data.clips.shape[1] // group
    clips = data.clips[index // per_clip]  # (N, T, H, W, 3) uint8
    first = (index % per_clip) * group
    picked = clips[torch.arange(len(index))[:, None], first[:, None] + torch.arange(group)]  # (N, g, H, W, 3)
    return group_frames(to_unit_range(picked), group)  # (N, 3, g, H, W) -> (N, g*3, H, W)


def uint8_frames(groups: torch.Tensor, group: int) -> np.ndarray:
    """Frame groups (N, 3 x group, H, W) in [-1, 1] -> their frames in order, uint8 (N x group, H, W, 3)."""
    return to_uint8(split_frames(groups, group)[:, :, None])[:, 0]  # (N*g, 3, 1, H, W) -> (N*g, H, W, 3)


def random_crops(frames: torch.Tensor, size: int, grid: int, generator: torch.Generator) -> torch.Tensor:
    """One size x size crop of each frame (N, 3, H, W), its corner on the latent grid (a multiple of `grid`), so a
    crop's latent pixels cover the same pixels as in the whole frame."""
    n, _, h, w = frames.shape
    ys = torch.randint((h - size) // grid + 1, (n,), generator=generator) * grid
    xs = torch.randint((w - size) // grid + 1, (n,), generator=generator) * grid
    return torch.stack([f[:, y:y + size, x:x + size] for f, y, x in zip(frames, ys.tolist(), xs.tolist())])


class AutoencoderRun:
    """The model, optimizer, random stream and place of one train-autoencoder run; budget_s (benchmarks) ends it after
    that many seconds of training, its cosine schedule running over the time instead of the steps."""

    def __init__(self, cfg: Config, resume: dict | None = None, budget_s: float | None = None, quiet: bool = False):
        self.cfg, ac, tc = cfg, cfg.autoencoder, cfg.train
        if cfg.data.image_size % ac.down:
            raise UserError(f"autoencoder.down={ac.down} must divide data.image_size={cfg.data.image_size}")
        self.quiet, self.budget_s = quiet, budget_s
        self.device = select_device(tc.device)
        self.exp_dir = os.path.join(tc.checkpoint_dir, tc.exp_name + SUFFIX)
        self.model_dir = os.path.join(self.exp_dir, "model")
        places = {"train.checkpoint_dir": self.exp_dir, "data.cache_dir": cfg.data.cache_dir}
        if tc.tensorboard:
            places["train.log_dir"] = os.path.join(tc.log_dir, tc.exp_name + SUFFIX)
        check_output_dirs(places)
        self.train_data = SignDataset(cfg.data, "train", quiet=quiet)
        self.val_data = SignDataset(cfg.data, "val", quiet=True)
        self.val_name = "val"
        if len(self.val_data) == 0:  # a tiny set: score on training frames, and say so
            self.val_data, self.val_name = self.train_data, "train (no val clips)"
        torch.manual_seed(tc.seed)
        self.model = FrameAutoencoder(ac.down, ac.latent_channels, ac.width, time_down=ac.time_down).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=ac.learning_rate, weight_decay=0.0,
                                           foreach=True)
        self.discriminator, self.disc_optimizer = None, None
        if ac.adversarial_weight:
            with torch.random.fork_rng(devices=[]):  # the global stream stays as without it: the same encoder
                torch.manual_seed(tc.seed + 1)
                self.discriminator = PatchDiscriminator(ac.time_down).to(self.device)
            self.disc_optimizer = torch.optim.AdamW(self.discriminator.parameters(), lr=ac.learning_rate,
                                                    betas=DISCRIMINATOR_BETAS, weight_decay=0.0, foreach=True)
        self.generator = torch.Generator().manual_seed(tc.seed)
        self.step, self.train_seconds = 0, 0.0
        self.warmup = max(1, min(MAX_WARMUP, ac.steps // 10))
        self.run_dir = new_run_dir(os.path.join(tc.log_dir, tc.exp_name + SUFFIX))
        if resume is not None:
            load_weights(self.model, resume["model"], "the autoencoder checkpoint")
            self.optimizer.load_state_dict(resume["optimizer"])
            self.step, self.run_dir = resume["step"], resume["run_dir"]
            set_rng_state(resume["rng"], self.generator)
            if self.discriminator is not None and "discriminator" in resume:
                load_weights(self.discriminator, resume["discriminator"], "the autoencoder checkpoint's discriminator")
                self.disc_optimizer.load_state_dict(resume["disc_optimizer"])
        self.writer = None

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def decoder_phase(self) -> bool:
        """Past autoencoder.steps: the decoder alone learns to decode noisy latents (not with a time budget)."""
        return self.budget_s is None and self.step >= self.cfg.autoencoder.steps

    def lr_scale(self) -> float:
        ac = self.cfg.autoencoder
        if self.decoder_phase:  # a fresh cosine at a quarter of the peak: the decoder is trained, not started
            return DECODER_LR_SCALE * lr_factor(self.step - ac.steps, 0, ac.decoder_steps, "cosine")
        if self.budget_s is None:
            return lr_factor(self.step, self.warmup, ac.steps, "cosine")
        done = min(1.0, self.train_seconds / self.budget_s)
        return min(1.0, (self.step + 1) / self.warmup) * 0.5 * (1.0 + math.cos(math.pi * done))

    def finished(self) -> bool:
        if self.budget_s is not None:
            return self.train_seconds >= self.budget_s
        return self.step >= self.cfg.autoencoder.steps + self.cfg.autoencoder.decoder_steps

    def train_step(self) -> dict[str, float]:
        ac = self.cfg.autoencoder
        lr = ac.learning_rate * self.lr_scale()
        for group in self.optimizer.param_groups + (self.disc_optimizer.param_groups if self.disc_optimizer else []):
            group["lr"] = lr
        total = len(self.train_data) * self.train_data.clips.shape[1] // ac.time_down
        x = frames_of(self.train_data, torch.randint(total, (ac.batch_frames,), generator=self.generator),
                      ac.time_down)
        if ac.crop:
            x = random_crops(x, ac.crop, ac.down, self.generator)
        x = x.to(self.device)
        if self.decoder_phase:
            if self.step == ac.steps:  # the decoder's moments start afresh with its new schedule
                self.optimizer.state.clear()
            out = self.decoder_pass(x, ac.decoder_noise, ac.decoder_noise_spread)
        else:
            out = self.model(x, generator=self.generator, latent_noise=ac.latent_noise)
        l1 = (out["recon"] - x).abs().mean()
        ssim_loss = 1.0 - ssim(out["recon"], x, data_range=2.0).mean()
        loss = l1 + ac.ssim_weight * ssim_loss + ac.kl_weight * out["kl"]
        equivariance = torch.zeros(())
        if ac.equivariance_weight and not self.decoder_phase:  # halved latents must decode to halved frames (EQ-VAE)
            small = self.model.decode(F.avg_pool2d(out["z"], 2))  # (N, 3, H/2, W/2)
            equivariance = (small - F.avg_pool2d(x, 2)).abs().mean()
            loss = loss + ac.equivariance_weight * equivariance
        adversarial, adversarial_on = torch.zeros(()), self.discriminator is not None and self.decoder_phase
        if adversarial_on:  # decoded patches should score as real ones
            adversarial = -self.discriminator(out["recon"]).mean()
            loss = loss + ac.adversarial_weight * adversarial
        if not torch.isfinite(loss):
            raise UserError(f"non-finite autoencoder loss at step {self.step}: lower autoencoder.learning_rate")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        disc = self.discriminator_step(x, out["recon"].detach()) if adversarial_on else 0.0
        self.step += 1
        return {"loss": loss.item(), "l1": l1.item(), "ssim_loss": ssim_loss.item(), "kl": out["kl"].item(),
                "equivariance": equivariance.item(), "adversarial": adversarial.item(), "discriminator": disc,
                "lr": self.optimizer.param_groups[0]["lr"]}

    def discriminator_step(self, real: torch.Tensor, decoded: torch.Tensor) -> float:
        """One hinge-loss step of the discriminator on this step's real and decoded frame groups."""
        self.disc_optimizer.zero_grad(set_to_none=True)  # also drops what the decoder's loss left on it
        loss = hinge_loss(self.discriminator(real), self.discriminator(decoded))
        loss.backward()
        self.disc_optimizer.step()
        return loss.item()

    def decoder_pass(self, x: torch.Tensor, noise: float, spread: float = 0.0) -> dict:
        """The frozen encoder's posterior means plus noise x their spread, decoded: gradients reach the decoder only.
        With `spread`, each latent's noise level is drawn from [noise - spread, noise]."""
        with torch.no_grad():
            mean = self.model.posterior(x)[0]
        eps = torch.randn(mean.shape, generator=self.generator, dtype=mean.dtype).to(mean.device)
        level = noise
        if spread:
            u = torch.rand((len(mean), 1, 1, 1), generator=self.generator, dtype=mean.dtype)
            level = (noise - spread + spread * u).to(mean.device)
        return {"recon": self.model.decode(mean + level * mean.std() * eps), "kl": torch.zeros((), device=x.device)}

    @torch.no_grad()
    def evaluate(self, max_frames: int) -> dict:
        """PSNR / SSIM of the decoded (uint8) val frames against the real ones, the posterior means' mean and std,
        and the real and decoded frames for the strip (the first of every clip in view)."""
        self.model.eval()
        g = self.cfg.autoencoder.time_down
        total = len(self.val_data) * self.val_data.clips.shape[1] // g
        index = torch.linspace(0, total - 1, min(total, max_frames // g)).round().long()
        real, fake, latents = [], [], []
        for chunk in index.split(64 // g):
            x = frames_of(self.val_data, chunk, g).to(self.device)
            z = self.model.encode(x)
            real.append(uint8_frames(x, g))
            fake.append(uint8_frames(self.model.decode(z), g))
            latents.append(z.float().cpu())
        self.model.train()
        real, fake, z = np.concatenate(real), np.concatenate(fake), torch.cat(latents)
        mse = float(np.mean((real.astype(np.float64) - fake.astype(np.float64)) ** 2))
        to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).double()  # noqa: E731 (N, H, W, 3) -> (N, 3, H, W)
        rough = torch.cat([(z[..., 1:] - z[..., :-1]).flatten(), (z[..., 1:, :] - z[..., :-1, :]).flatten()])
        return {"psnr": 100.0 if mse == 0 else min(100.0, 10 * math.log10(255.0**2 / mse)),
                "latent_roughness": float(rough.std() / z.std()),  # neighbours' difference / spread: 0 smooth
                "ssim": float(ssim(to_t(real), to_t(fake), data_range=255.0).mean()),
                "latent_mean": float(z.mean()), "latent_std": float(z.std()), "frames": len(real),
                "real": real, "fake": fake}

    def state_dict(self) -> dict:
        state = {"kind": STATE_KIND, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "step": self.step, "rng": rng_state(self.generator), "config": self.cfg.to_dict(),
                 "run_dir": self.run_dir}
        if self.discriminator is not None:
            state.update(discriminator=self.discriminator.state_dict(), disc_optimizer=self.disc_optimizer.state_dict())
        return state

    def save(self) -> None:
        save_checkpoint(os.path.join(self.exp_dir, "latest.pt"), self.state_dict())

    def log(self, prefix: str, values: dict) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                if isinstance(value, float) and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}/{tag}", value, self.step)

    def train(self, stop_at: int | None = None) -> dict:
        """Run to the end, then score, draw the strip and save the model folder; returns the figures and paths. A stop
        signal or reaching step stop_at saves latest.pt and returns early ("stopped"; "stopped_by": the signal)."""
        tc = self.cfg.train
        with contextlib.ExitStack() as held:
            held.enter_context(ExperimentLock(self.exp_dir))
            remove_stale_temp_files(self.exp_dir)
            if tc.tensorboard:
                from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when logging

                self.writer = held.enter_context(SummaryWriter(self.run_dir))
            ac = self.cfg.autoencoder
            total = None if self.budget_s is not None else ac.steps + ac.decoder_steps
            bar = held.enter_context(tqdm(total=total, initial=self.step, desc=tc.exp_name + SUFFIX, disable=self.quiet,
                                          dynamic_ncols=True, file=sys.stderr))
            stop = held.enter_context(StopRequest())
            start_step = self.step
            while not self.finished():
                t0 = time.perf_counter()
                values = self.train_step()
                self.train_seconds += time.perf_counter() - t0
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}", refresh=False)
                if self.step % tc.log_every == 0:
                    self.log("autoencoder", values)
                if self.step % tc.checkpoint_every == 0 and not self.finished():
                    self.save()
                    self.log("autoencoder_val", {k: v for k, v in self.evaluate(64).items() if k in ("psnr", "ssim")})
                if (stop.signum or self.step == stop_at) and not self.finished():
                    self.save()
                    return {"stopped": True, "stopped_by": stop.signum, "step": self.step, "exp_dir": self.exp_dir}
            bar.close()
            self.save()
            result = self.finish()
            result.update(stopped=False, stopped_by=None, seconds=self.train_seconds,
                          s_per_step=self.train_seconds / max(1, self.step - start_step))
            return result

    def finish(self) -> dict:
        """Score the val frames, write the strip and the model folder (scale and shift: 1 / std and mean of the val
        latents)."""
        scores = self.evaluate(VAL_FRAMES)
        self.log("autoencoder_val", {k: scores[k] for k in ("psnr", "ssim", "latent_mean", "latent_std",
                                                            "latent_roughness")})
        t = self.val_data.clips.shape[1]
        picks = np.linspace(0, len(scores["real"]) - 1, min(STRIP_FRAMES, len(scores["real"]))).round().astype(int)
        real, fake = frame_strip(scores["real"][picks]), frame_strip(scores["fake"][picks])  # (H, W', 3) each
        strip = np.concatenate([real, np.full_like(real[:2], 255), fake], axis=0)  # real above, a 2-pixel gap
        strip = upscale(strip[None], 128)[0]
        strip_path = os.path.join(self.exp_dir, "reconstruction.png")
        with atomic_write(strip_path) as f:
            f.write(png_bytes(strip))
        if self.writer is not None:
            self.writer.add_image("autoencoder_val/real_vs_reconstructed", strip, self.step, dataformats="HWC")
        self.model.scaling_factor = 1.0 / max(scores["latent_std"], 1e-6)
        self.model.shift_factor = scores["latent_mean"]
        dc = self.cfg.data
        self.model.save(self.model_dir, meta={
            "steps": self.step, "image_size": dc.image_size, "data_dir": os.path.abspath(dc.data_dir),
            "frames_per_clip": t, "latent_mean": scores["latent_mean"], "latent_std": scores["latent_std"],
            "latent_roughness": scores["latent_roughness"],
            f"{self.val_name.split()[0]}_psnr": scores["psnr"], f"{self.val_name.split()[0]}_ssim": scores["ssim"]})
        return {"path": self.model_dir, "strip": strip_path, "step": self.step, "params": self.num_params,
                "scored_on": self.val_name, **{k: v for k, v in scores.items() if k not in ("real", "fake")}}


def load_run_state(path: str) -> dict:
    """A train-autoencoder latest.pt (torch.load with weights_only=True), or a one-line UserError."""
    return read_state(path, "autoencoder checkpoint", lambda s: s.get("kind") == STATE_KIND,
                      f"{path} is not a train-autoencoder checkpoint", " (start a run without --resume)")


def refuse_to_overwrite(exp_dir: str) -> None:
    """A fresh run never replaces another run's checkpoint or model: it continues it (--resume) or uses another name."""
    held = [p for p in ("latest.pt", os.path.join("model", "config.json")) if os.path.exists(os.path.join(exp_dir, p))]
    if held:
        raise UserError(f"{exp_dir} already holds an autoencoder run ({held[0]}): continue it with `python main.py "
                        f"train-autoencoder --resume`, or start a new one under another --set train.exp_name=NAME")


def train_autoencoder(cfg: Config, resume: dict | None = None, budget_s: float | None = None,
                      quiet: bool = False, stop_at: int | None = None) -> dict:
    """Train (or continue) the own autoencoder of cfg; see the module docstring for what it writes."""
    if resume is None:
        refuse_to_overwrite(os.path.join(cfg.train.checkpoint_dir, cfg.train.exp_name + SUFFIX))
    return AutoencoderRun(cfg, resume=resume, budget_s=budget_s, quiet=quiet).train(stop_at)
