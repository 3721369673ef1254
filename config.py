"""Typed configuration with named presets.

`python main.py config --preset P --set section.field=value` prints the resolved config. Every field is read
somewhere; the short comment says why it exists. Checkpoints store `asdict(config)` (primitives only) and
`Config.from_dict` rebuilds it on resume.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field

from utils.errors import UserError


class ConfigError(UserError):
    """A configuration mistake, naming the field."""


REST_THRESHOLD = 2.0  # data.trim_still of the real presets: cuts real footage's rest poses, no signing (own_data.md)
DEMO_DATA_DIR = "training_data/synthetic"  # the only folder the synthetic set is ever written into unasked
MAX_FRAMES = 512  # clip length bound: 512 frames of 512x512 already take 400 MB per clip
MAX_IMAGE_SIZE = 1024  # frame size bound: beyond any pixel-space video model, and its clips would not fit in memory
AUTOENCODER_SUFFIX = "-autoencoder"  # train-autoencoder's folders: checkpoints/<exp>-autoencoder, logs/...
MAX_INT = 2**31  # counts and sizes: far above any real value, below what torch's and numpy's int32 paths overflow at
WIDE_INTS = {"train.seed": 2**63, "data.synth_seed": 2**63, "data.max_clip_pixels": 2**63}  # 64-bit by nature
# field -> smallest allowed value (the ranges with an upper bound too are checked in Config.validate)
MINIMUMS = {
    "data.max_clip_pixels": 1, "data.trim_still": 0, "data.synth_num": 1, "data.synth_holdout": 0, "data.synth_seed": 0,
    "text.max_length": 2, "model.frame_chunk_size": 1, "diffusion.timesteps": 2, "diffusion.eta": 0,
    "diffusion.min_snr_gamma": 0, "diffusion.motion_weight": 0, "diffusion.guidance_scale": 0, "train.epochs": 1,
    "train.max_steps": 0, "train.batch_size": 1, "train.grad_accum": 1, "train.weight_decay": 0, "train.grad_clip": 0,
    "train.warmup_steps": 0, "train.seed": 0, "train.log_every": 1, "train.sample_every": 0, "train.stats_every": 0,
    "train.hist_every": 0, "train.checkpoint_every": 1, "eval.evaluator_dim": 4, "eval.evaluator_patch": 1,
    "eval.evaluator_depth": 1, "eval.evaluator_steps": 1, "eval.evaluator_batch_size": 2,
    "autoencoder.steps": 1, "autoencoder.batch_frames": 1, "autoencoder.kl_weight": 0, "autoencoder.ssim_weight": 0,
    "autoencoder.crop": 0, "autoencoder.latent_noise": 0, "autoencoder.equivariance_weight": 0,
    "autoencoder.decoder_steps": 0, "autoencoder.decoder_noise": 0, "autoencoder.decoder_noise_spread": 0,
    "autoencoder.adversarial_weight": 0,
}


@dataclass
class DataConfig:
    data_dir: str = "training_data"  # flat folder of <name>.gif / video + <name>.txt caption pairs
    num_frames: int = 16  # frames per clip, sampled evenly over the whole clip's playing time
    image_size: int = 64  # square training resolution
    resize_mode: str = "pad"  # "pad" keeps the whole frame (letterbox); "crop" fills the square; "fit" cuts up to
    #                           a quarter of the long side, then pads: 4:3 footage fills the square, 16:9 3/4 of it
    val_fraction: float = 0.05  # deterministic share of clips held out for validation
    cache_dir: str = "cache"  # decoded uint8 clips and caption embeddings, keyed by content + settings
    allow_stills: bool = False  # keep 1-frame clips (a still image teaches no motion: skipped by default)
    max_clip_pixels: int = 1_000_000_000  # width x height x frames a clip may declare or decode to; refused above
    caption_normalize: bool = False  # lower-case, drop punctuation: "Thank you." and "thank you" become one caption
    trim_still: float = 0.0  # drop end frames changing less than this (mean |diff|, 0-255) from the next: rest poses
    synth_if_missing: bool = False  # write the built-in synthetic set when data_dir is DEMO_DATA_DIR and has no clips
    synth_num: int = 600  # clips written when synth_if_missing triggers
    synth_seed: int = 0  # seed of that synthetic set (deterministic content)
    synth_holdout: int = 0  # word combinations that set keeps out of training (heldout/: `evaluate`'s unseen captions)


@dataclass
class TextConfig:
    encoder: str = "distilbert-base-uncased"  # HF name, local dir, or "all-MiniLM-L6-v2" (packaged, offline)
    max_length: int = 32  # token budget per caption; longer captions are truncated with a warning


@dataclass
class ModelConfig:
    arch: str = "TinyDiT-D14/2"  # a named size of models.MODELS: VideoDiT, UNet3D, ViT3D, DiT3D or ViViT
    pretrained: str = ""  # TinyDiT checkpoint to start a VideoDiT from ("" = random init); see pretrained/README.md
    vit_init: str = ""  # Hugging Face ViT (name or folder) to start a ViViT's per-frame encoder from ("" = random)
    frame_chunk_size: int = 4  # VideoDiT: frames per spatial-block pass, bounds activation memory on big models
    grad_checkpointing: bool = False  # recompute chunk activations in backward to save memory
    temporal_attention: bool = True  # attention across frames at each spatial position
    cross_attention: bool = True  # token-level text conditioning (the pooled vector always conditions adaLN)
    text_alignment: bool = False  # prior that each frame reads the caption words at its relative place (in order)
    caption_dropout: float = 0.1  # share of training captions replaced by the learned null embedding (CFG)


@dataclass
class DiffusionConfig:
    timesteps: int = 50  # training diffusion steps T
    schedule: str = "cosine"  # linear | cosine | quadratic | sigmoid
    prediction: str = "eps"  # eps | v (v predicts x0 directly at low SNR: far better samples early in training)
    min_snr_gamma: float = 0.0  # min-SNR-γ loss weighting (0 = plain MSE); caps the weight of nearly clean steps
    motion_weight: float = 0.0  # more loss weight on moving pixels (hands carry the caption) at noisy steps (0 = off)
    timestep_shift: float = 1.0  # training noise levels u -> k u / (1 + (k - 1) u) of uniform u (SD3's shift): k > 1
    # trains the noisy end, where the caption picks the sign, more often (1 = uniform)
    frame_noise_correlation: float = 0.0  # noise shared by a clip's frames (mixed noise prior): less flicker (0 = off)
    sample_noise_correlation: float = -1.0  # the samplers' rho (< 0: frame_noise_correlation); above it: less flicker
    sampler: str = "ddim"  # ddim | dpm++2m (second order: nearer the ODE's end, not better clips here) | ddpm
    sample_steps: int = 50  # sampler steps (<= timesteps)
    eta: float = 0.0  # DDIM stochasticity (0 = deterministic, 1 = DDPM-like)
    guidance_scale: float = 3.0  # classifier-free guidance weight (1 = off)


@dataclass
class TrainConfig:
    exp_name: str = "tinyfusion"  # names checkpoints/<exp>, logs/<exp>, generated_samples/<exp>
    epochs: int = 1000  # passes over the training split
    max_steps: int = 0  # stop after this many optimizer steps (0 = run all epochs)
    batch_size: int = 1  # clips per micro-batch on each process (global batch = batch_size x processes x grad_accum)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4  # peak AdamW learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # max global grad norm (0 = off)
    lr_schedule: str = "cosine"  # cosine | constant (both after linear warmup)
    warmup_steps: int = 500  # linear warmup from 0 to lr, in optimizer steps
    ema_decay: float = 0.9999  # EMA of weights used for sampling
    seed: int = 42  # seeds data order, noise, timesteps and caption dropout
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | fp32 | bf16
    compile: bool = False  # torch.compile the denoiser: faster GPU steps after a first step that compiles (minutes)
    fused_adamw: bool = True  # one fused AdamW kernel over all parameters on CUDA (elsewhere: the foreach AdamW)
    tf32: bool = True  # TF32 fp32 matmuls / convolutions on Ampere+ GPUs (~2x; bf16 autocast is unaffected)
    memory_check: bool = True  # refuse a run whose estimated step memory exceeds free memory (false: try anyway)
    log_every: int = 10  # optimizer steps between scalar logs
    stats_every: int = 100  # steps between per-module weight/grad norms, update ratios (0 = off): costs a weight copy
    hist_every: int = 500  # steps between weight histograms and the loss-vs-t plot (0 = off): larger events
    tensorboard: bool = True  # write TensorBoard logs under log_dir (false: no run folder, no logging cost)
    sample_every: int = 1000  # optimizer steps between sample GIFs (0 = only at the end)
    checkpoint_every: int = 1000  # optimizer steps between kept step_N.pt checkpoints (latest.pt is refreshed too)
    sample_prompts: tuple[str, ...] = ("hello", "thank you")  # captions sampled in training (empty: the data's top 3)
    checkpoint_dir: str = "checkpoints"  # root of per-experiment checkpoint folders
    log_dir: str = "logs"  # root of per-experiment TensorBoard runs
    sample_dir: str = "generated_samples"  # root of per-experiment sample GIFs


@dataclass
class EvalConfig:
    evaluator_dim: int = 64  # width of the evaluator's video and text towers (multiple of 4)
    evaluator_patch: int = 4  # pixels per patch side of the evaluator's frame encoder (divides data.image_size)
    evaluator_depth: int = 2  # transformer layers over time and over the caption's tokens
    evaluator_steps: int = 1500  # optimizer steps of `train-evaluator` (~1 min for the demo data on 1 CPU thread)
    evaluator_batch_size: int = 32  # clips per contrastive batch: more clips = more negatives per step
    evaluator_lr: float = 1e-3  # peak AdamW learning rate of `train-evaluator` (warmup, then cosine)
    # synthetic sets: train on a fresh render of the same vocabulary with another seed, so the evaluator never saw the
    # clips it scores (a user's own folder has no second render: evaluate says when it scores clips it trained on)
    evaluator_render: bool = True
    # synthetic sets: every caption's render with its handshapes, and with its paths, swapped is a negative, so R@1
    # needs shapes and paths (colour and place alone tell 23 of the 24 words apart)
    evaluator_swaps: bool = True


@dataclass
class AutoencoderConfig:
    kind: str = "none"  # none (pixel space) | own (train-autoencoder's) | kl (diffusers AutoencoderKL) | tiny (TAESD)
    path: str = ""  # own: train-autoencoder's model folder (empty: this experiment's); kl / tiny: a hub name or folder
    down: int = 4  # own: spatial downsampling, 4 or 8 (a latent pixel stands for down x down frame pixels)
    latent_channels: int = 4  # own: channels per latent pixel; more keep more detail, fewer are easier to diffuse
    time_down: int = 1  # own: consecutive frames per latent frame, 1 or 2: 2 halves the denoiser's frames and so its
    #                     step cost (each latent frame holds a frame pair: give it twice the latent_channels)
    width: int = 32  # own: channels at full resolution (x2 per halving, at most x4); cost grows with its square
    steps: int = 3000  # train-autoencoder: optimizer steps
    batch_frames: int = 16  # train-autoencoder: frame groups (time_down frames each) per step, drawn at random
    learning_rate: float = 2e-3  # train-autoencoder: peak AdamW learning rate (short warmup, then cosine to 0)
    kl_weight: float = 1e-4  # weight of the latents' KL to N(0, I): a smooth, bounded latent space for diffusion
    ssim_weight: float = 0.2  # weight of the 1 - SSIM loss beside L1: sharper edges (hands, faces) than L1 alone
    crop: int = 0  # train-autoencoder: random square crops of this side (0 = whole frames): more, cheaper steps
    latent_noise: float = 0.0  # noise (x the latents' std) added before decoding in training: a decoder robust to
    #                            the small errors a sampler leaves in its latents (no fixed-pattern texture)
    decoder_steps: int = 0  # train-autoencoder: more steps after `steps` that train the decoder alone (encoder
    #                         frozen, so the latents stay) on latents with decoder_noise: clean decoded samples
    decoder_noise: float = 0.5  # noise (x the latents' spread) in those steps: the size of a sampler's latent errors
    decoder_noise_spread: float = 0.0  # each latent's noise level drawn from [decoder_noise - this, decoder_noise]:
    #                                    a decoder that smooths heavy errors and keeps near-clean latents sharper
    adversarial_weight: float = 0.0  # decoder-only steps: weight of a patch discriminator's loss (models/
    #                                  discriminator.py): detail the latents leave open drawn sharp, not blurred
    equivariance_weight: float = 0.0  # weight of L1(decode(latents halved), frames halved) (EQ-VAE): latents that
    #                                   look like small images, spatially smooth, so easier to diffuse


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        cfg = cls()
        for section, values in d.items():
            for name, value in values.items():
                set_field(cfg, f"{section}.{name}", value)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Reject values out of range, naming the field. Names chosen from an owner's table (model.arch,
        diffusion.schedule, ...) are checked by methods.run_config.check_choices, which can import the owners."""
        for section in dataclasses.fields(self):
            for f in dataclasses.fields(getattr(self, section.name)):
                value = getattr(getattr(self, section.name), f.name)
                if isinstance(value, float) and not math.isfinite(value):
                    raise ConfigError(f"{section.name}.{f.name}={value!r} must be a finite number")
                limit = WIDE_INTS.get(f"{section.name}.{f.name}", MAX_INT)
                if isinstance(value, int) and not isinstance(value, bool) and value >= limit:
                    raise ConfigError(f"{section.name}.{f.name}={value!r} must be below 2**{limit.bit_length() - 1}")
        for name, low in MINIMUMS.items():
            if get_field(self, name) < low:
                raise ConfigError(f"{name}={get_field(self, name)!r} must be >= {low}")
        checks = [
            ("data.data_dir", bool(self.data.data_dir.strip()), "must name a folder"),
            ("data.num_frames", 1 <= self.data.num_frames <= MAX_FRAMES, f"must be in [1, {MAX_FRAMES}]"),
            ("data.image_size", 8 <= self.data.image_size <= MAX_IMAGE_SIZE, f"must be in [8, {MAX_IMAGE_SIZE}]"),
            ("data.val_fraction", 0.0 <= self.data.val_fraction < 1.0, "must be in [0, 1)"),
            ("model.caption_dropout", 0.0 <= self.model.caption_dropout < 1.0, "must be in [0, 1)"),
            ("diffusion.frame_noise_correlation", 0.0 <= self.diffusion.frame_noise_correlation < 1.0,
             "must be in [0, 1)"),
            ("diffusion.timestep_shift", 0 < self.diffusion.timestep_shift <= 100, "must be in (0, 100]"),
            ("diffusion.sample_noise_correlation", self.diffusion.sample_noise_correlation < 1.0,
             "must be < 1 (negative: diffusion.frame_noise_correlation)"),
            ("diffusion.sample_steps", 1 <= self.diffusion.sample_steps <= self.diffusion.timesteps,
             "must be in [1, diffusion.timesteps]"),
            ("diffusion.eta", self.diffusion.sampler != "dpm++2m" or self.diffusion.eta == 0,
             "must be 0 with diffusion.sampler=dpm++2m (it solves the deterministic ODE; eta belongs to ddim)"),
            ("train.lr", 0 < self.train.lr <= 1, "must be in (0, 1]"),
            ("train.weight_decay", self.train.lr * self.train.weight_decay < 1,
             "must keep train.lr * train.weight_decay < 1 (AdamW shrinks weights by that factor each step)"),
            ("train.ema_decay", 0.0 <= self.train.ema_decay < 1.0, "must be in [0, 1)"),
            ("train.sample_prompts", all(p.strip() for p in self.train.sample_prompts), "must not hold empty captions"),
            ("train.exp_name", _safe_name(self.train.exp_name), "must be letters, digits, '-', '_' or '.'"),
            ("eval.evaluator_dim", self.eval.evaluator_dim % 4 == 0, "must be a positive multiple of 4"),
            ("eval.evaluator_lr", self.eval.evaluator_lr > 0, "must be > 0"),
            ("autoencoder.down", self.autoencoder.down in (4, 8), "must be 4 or 8"),
            ("autoencoder.down", self.autoencoder.kind == "none" or self.data.image_size % self.autoencoder.down == 0,
             "must divide data.image_size"),
            ("autoencoder.latent_channels", 1 <= self.autoencoder.latent_channels <= 64, "must be in [1, 64]"),
            ("autoencoder.time_down", self.autoencoder.time_down in (1, 2), "must be 1 or 2"),
            ("autoencoder.time_down", self.autoencoder.time_down == 1 or self.autoencoder.kind in ("none", "own"),
             "must be 1 for a kl / tiny autoencoder (they code single frames)"),
            ("autoencoder.time_down", self.data.num_frames % self.autoencoder.time_down == 0,
             "must divide data.num_frames"),
            ("autoencoder.width", self.autoencoder.width >= 8 and self.autoencoder.width % 8 == 0,
             "must be a positive multiple of 8 (GroupNorm groups)"),
            ("autoencoder.learning_rate", 0 < self.autoencoder.learning_rate <= 1, "must be in (0, 1]"),
            ("autoencoder.crop", self.autoencoder.crop == 0 or (self.autoencoder.crop % self.autoencoder.down == 0
                                                                and self.autoencoder.crop <= self.data.image_size),
             "must be 0 (whole frames) or a multiple of autoencoder.down up to data.image_size"),
            ("autoencoder.decoder_noise_spread",
             self.autoencoder.decoder_noise_spread <= self.autoencoder.decoder_noise,
             "must be <= autoencoder.decoder_noise (a noise level is not negative)"),
            ("autoencoder.adversarial_weight",
             not self.autoencoder.adversarial_weight or self.autoencoder.decoder_steps,
             "needs autoencoder.decoder_steps > 0 (it trains the decoder-only steps)"),
            ("autoencoder.adversarial_weight", not self.autoencoder.adversarial_weight
             or (self.autoencoder.crop or self.data.image_size) >= 16,
             "needs frames (or autoencoder.crop) of at least 16 pixels: the discriminator's patches are 16-34 wide"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ConfigError(f"{name}={get_field(self, name)!r} {why}")


def _safe_name(name: str) -> bool:
    return bool(name) and all(ch.isalnum() or ch in "-_." for ch in name) and not name.startswith(".")


def tinyfusion() -> Config:
    """The seed configuration: TinyDiT-D14/2 + DistilBERT, 16x64x64 clips, batch 1 (a GPU job)."""
    cfg = Config()
    cfg.model.pretrained = "pretrained/TinyDiT-D14-MaskedKD-500K.pt"
    return cfg


def tinyfusion_256() -> Config:
    """TinyDiT-D14/2 as TinyFusion trained it: 16 frames of 256x256 through the Stable Diffusion VAE (8x down, 4
    channels) give 32x32 latents, the pretrained 16x16 patch grid, so every file tensor loads exactly (learned-sigma
    final layer included: models/pretrained.py), on DiT's own linear noise schedule. A GPU job."""
    cfg = tinyfusion()
    cfg.data.image_size = 256
    cfg.data.num_frames = 16
    cfg.autoencoder = AutoencoderConfig(kind="kl", path="stabilityai/sd-vae-ft-mse", down=8, latent_channels=4)
    cfg.diffusion.schedule = "linear"  # betas 1e-4..0.02: each t keeps the noise level the file was trained at
    cfg.train.exp_name = "tinyfusion-256"
    return cfg


def demo() -> Config:
    """Small CPU preset: trains on the built-in synthetic signer in about 10 minutes on 2 cores (docs/demo.md).

    The recipe that won the 10-minute race (docs/architecture_race.md): a small space-time U-Net,
    8 frames of 32x32, v-prediction with a plain (not min-SNR) loss, so the noisiest steps, where the caption
    decides what moves where, keep their full weight, motion-weighted pixels (the hands carry the caption), and
    the text-alignment prior (each frame reads its caption words in order), and noise 90% shared by a clip's frames
    (what an undertrained model leaves of it flickers less), sampled from noise 99.9% shared at guidance 2: frame
    change 7.9 against 7.1 for real clips and R@1 0.75 of real (the fifth round's three draws, docs/demo.md). The
    sampling settings come from the fourth round: one checkpoint sampled at the trained rho 0.9 and guidance 5 gave
    frame change 21.6, at these settings 8.1. A short EMA: a 0.995 EMA lags too far behind 1000 fast-moving steps.
    1300 steps, not the race's 1000: 10-step sampling freed the time, and they score better (docs/demo.md).
    """
    cfg = Config()
    cfg.data = DataConfig(data_dir=DEMO_DATA_DIR, num_frames=8, image_size=32, val_fraction=0.05,
                          synth_if_missing=True, synth_holdout=24)
    cfg.text = TextConfig(encoder="all-MiniLM-L6-v2", max_length=16)
    # UNet3D-S3, not the race's UNet3D-S: an 8-channel level at the full 32x32 instead of the 2x2 pixel-unshuffle
    # costs 1.28x the training time (518 s against 406) and, three draws, lifts R@1 from 0.78 / 0.83 to 0.83 / 0.90 of
    # real, word order 0.74 -> 0.84, place 5.3 -> 3.8 px, background 9.8 -> 8.6 grey levels (docs/demo.md)
    cfg.model = ModelConfig(arch="UNet3D-S3", text_alignment=True)
    # 5 DDIM steps: fewer steps draw the hands nearer their true places (on the UNet3D-S demo, three draws: place
    # 5.3 px against 7.0 at 10 steps and 9 at 50, word order 0.74 against 0.60, background 9.8 against 10.3 grey
    # levels, SSIM 0.61 against 0.59) at R@1 0.78 / 0.83 of real (seen / held-out) against 0.80 / 0.82; 3 steps place
    # them better still but lose R@1 (0.73) and flicker (docs/demo.md)
    cfg.diffusion = DiffusionConfig(prediction="v", motion_weight=3.0, frame_noise_correlation=0.9,
                                    sample_noise_correlation=0.999, guidance_scale=2.0, sample_steps=5)
    cfg.train = TrainConfig(exp_name="demo", epochs=1000, max_steps=1300, batch_size=8, lr=1e-3,
                            warmup_steps=100, ema_decay=0.99, log_every=10, sample_every=500,
                            checkpoint_every=500, sample_prompts=("hello", "thank you", "yes no please"))
    return cfg


def real() -> Config:
    """Your own sign footage in training_data/ (GIFs or videos + captions): 16 frames of 64x64, where a signer's hands
    are several pixels wide (at 32x32 they are 1-2), diffused in the latent space of the project's own autoencoder
    (4x down, frame pairs, 8 channels: 8 latent frames of 16x16x8), which `python main.py train-autoencoder --preset
    real` trains first on the same folder in 4-10 CPU minutes (autoencoder.path empty: this experiment's). A
    latent step of the 0.94M U-Net costs a fraction of a second on 2 cores where a pixel step of the 3.3M one cost
    15.7 s (docs/latent.md);
    `--set autoencoder.kind=none` trains on pixels. The demo's recipe otherwise; captions normalised (case,
    punctuation), rest poses at both ends trimmed, prompts from the data's own captions."""
    cfg = demo()
    cfg.data = DataConfig(data_dir="training_data", num_frames=16, image_size=64, caption_normalize=True,
                          trim_still=REST_THRESHOLD)
    # frame pairs (8 channels): half the frames reach the denoiser, so a step costs 0.22 s instead of 0.31 and the same
    # time shows each caption more often; 32-pixel crops: 32 of them cost what 8 whole frames do and train faster;
    # latent noise and the decoder-only steps at noise 1.0: a decoder that does not turn a sampler's latent errors into
    # a texture (at 0.5 the pair decoder's backdrop stayed blotched; 1.0: SSIM 0.58 -> 0.64 at the same R@1,
    # docs/latent.md); noise levels drawn from [0.5, 1.0] (spread 0.5): the same encoder and cost, and paired draws on
    # two trained models gave R@1 0.67 -> 0.70 and 0.82 -> 0.86 of real at the same SSIM; 1,600 + 300 steps, not
    # 700 + 300: 4.8 more minutes lift the clean reconstruction 27.65 -> 29.93 dB (the decoder's: 26.11 -> 27.58), the
    # ceiling 0.90 -> 0.97 and R@1 0.70 -> 0.76 of real in six paired draws (5 up, 1 even)
    cfg.autoencoder = AutoencoderConfig(kind="own", latent_channels=8, time_down=2, steps=1600, batch_frames=32,
                                        crop=32, latent_noise=0.1, decoder_steps=300, decoder_noise=1.0,
                                        decoder_noise_spread=0.5)
    # the caption-alignment prior, though a dictionary caption is one sign: without it R@1 0.64 against 0.76 of real
    # on the 344 Thai clips (six draws, docs/latent.md)
    cfg.model = ModelConfig(arch="UNet3D-S", text_alignment=True)
    # 10 DDIM steps: at or above 50 in all 12 caption draws of two trained models (R@1 0.80 / 0.87 of real against
    # 0.77 / 0.84, docs/latent.md), at a fifth of the sampling time; the demo's 5 moved R@1 within the draws' noise
    # here (0.703 -> 0.682 and 0.859 -> 0.865 on two models), so the measured 10 stay
    cfg.diffusion.sample_steps = 10
    # guidance 1.5, not the demo's 2: on three 6,400-step models (two seeds of the 344 Thai clips, all 453 clips), six
    # draws each, R@1 0.911 / 0.916 / 0.750 -> 0.916 / 0.927 / 0.776 of real, SSIM +0.013-0.015, and motion nearer
    # the real clips' (frame change 9.1 / 8.9 -> 8.2 against 7.6); 2.5 lost R@1 (0.874) (docs/latent.md)
    cfg.diffusion.guidance_scale = 1.5
    # noise levels drawn three times as often at the noisy end, where the sign is decided: R@1 0.79 -> 0.84 of real,
    # SSIM 0.732 -> 0.747, clips a little livelier than the real ones (frame change 8.95 against 7.64); a
    # middle-heavy (logit-normal) draw fell to 0.57 (six draws each, docs/latent.md)
    cfg.diffusion.timestep_shift = 3.0
    # batch 32: the 0.94M U-Net on 8 x 16x16x8 latents leaves 2 cores idle at batch 8, and 32 clips a step see
    # 1.5-2x the clips a second; 3,200 steps took about the time 9,000 at batch 8 did and lifted R@1 from 0.57 to 0.73
    # of real on 344 clips; lr 2e-3 for the 4x batch: the same R@1 (0.75 against 0.73, within a draw's noise) and SSIM
    # 0.70 -> 0.71; 6,400 steps, not 3,200: R@1 0.84 -> 0.91 of real in two runs of independent seeds (autoencoder,
    # denoiser, evaluator), SSIM 0.75 -> 0.79, for 15 minutes of diffusion instead of 7.5 on a fast day of the 2-core
    # machine (18 in all with the autoencoder; an estimated 40-50 on its slow days) (docs/latent.md)
    cfg.train = TrainConfig(exp_name="real", epochs=100000, max_steps=6400, batch_size=32, lr=2e-3, warmup_steps=100,
                            ema_decay=0.995, sample_every=1000, checkpoint_every=1000, sample_prompts=())
    return cfg


def real_large() -> Config:
    """`real` at 16 frames of 128x128 through an 8x-down own autoencoder of single frames (a 16x16x4 latent grid per
    frame, as measured at 128 px in docs/latent.md: hands twice as sharp), on the 91.1M-parameter U-Net: a GPU job
    (bf16 there)."""
    cfg = real()
    cfg.data.image_size = 128
    cfg.autoencoder = dataclasses.replace(cfg.autoencoder, down=8, latent_channels=4, time_down=1, crop=64, steps=3000,
                                          decoder_steps=400)
    cfg.model = ModelConfig(arch="UNet3D-B", text_alignment=True)
    cfg.diffusion.sample_steps = DiffusionConfig.sample_steps  # 10 was measured on `real`'s small model only
    # timestep_shift 3 and guidance 1.5 stay, unmeasured at 128 px: the same latent grid, and SD3 shifts more, not less,
    # at larger sizes
    cfg.train = dataclasses.replace(cfg.train, exp_name="real-large", max_steps=100000, batch_size=16, lr=2e-4,
                                    warmup_steps=1000, ema_decay=0.9999, sample_every=5000, checkpoint_every=5000)
    return cfg


PRESETS: dict[str, typing.Callable[[], Config]] = {"tinyfusion": tinyfusion, "tinyfusion-256": tinyfusion_256,
                                                   "demo": demo, "real": real, "real-large": real_large}
DEFAULT_PRESET = "demo"


def add_config_args(p: argparse.ArgumentParser) -> None:
    """--preset and --set, as every command and pre-flight script that builds a configuration takes them."""
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                   help=f"named configuration (default: {DEFAULT_PRESET})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. --set train.lr=3e-4 (repeatable)")


def get_field(cfg: Config, dotted: str):
    section, name = _split(cfg, dotted)
    return getattr(getattr(cfg, section), name)


def _split(cfg: Config, dotted: str) -> tuple[str, str]:
    """Resolve "section.field", or a bare "field" that exists in exactly one section."""
    sections = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    if "." in dotted:
        section, name = dotted.split(".", 1)
        if section in sections and name in {f.name for f in dataclasses.fields(sections[section])}:
            return section, name
    else:
        owners = [s for s, obj in sections.items() if dotted in {f.name for f in dataclasses.fields(obj)}]
        if len(owners) == 1:
            return owners[0], dotted
        if owners:
            raise ConfigError(f"'{dotted}' is a field of several sections ({', '.join(owners)}): write "
                              f"{owners[0]}.{dotted} or another section's name before it")
    raise ConfigError(f"unknown config field '{dotted}' (see `python main.py config` for the field names)")


def _parse(value, typ, dotted: str):
    """Convert a CLI string (or a stored primitive) to the field's declared type."""
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if typ is float:
            return float(value)
        if typ is str:
            return str(value)
        if typing.get_origin(typ) is tuple:
            if isinstance(value, (list, tuple)):
                return tuple(str(v) for v in value)
            return tuple(part.strip() for part in str(value).split(",") if part.strip())
    except ValueError:
        pass
    raise ConfigError(f"bad value {value!r} for {dotted} (expected {getattr(typ, '__name__', typ)})")


def set_field(cfg: Config, dotted: str, value) -> None:
    section, name = _split(cfg, dotted)
    obj = getattr(cfg, section)
    hints = typing.get_type_hints(type(obj))
    setattr(obj, name, _parse(value, hints[name], f"{section}.{name}"))


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `field=value` strings from --set in order."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects field=value, got '{item}'")
        key, value = item.split("=", 1)
        set_field(cfg, key.strip(), value)
    return cfg


def build_config(preset: str, overrides: list[str] | None = None) -> Config:
    """A preset with --set overrides. Pointed at another data folder, a preset does not keep the experiment name and
    sample prompts made for its own data (the run would overwrite that data's checkpoints and sample captions that
    are not in the user's set) unless those are set too: the name gains the folder's, the prompts come from the data."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}' (choices: {', '.join(PRESETS)})")
    base = PRESETS[preset]()
    cfg = apply_overrides(PRESETS[preset](), overrides or [])
    if os.path.normpath(cfg.data.data_dir) != os.path.normpath(base.data.data_dir):
        if cfg.train.exp_name == base.train.exp_name:
            cfg.train.exp_name = f"{base.train.exp_name}_{folder_tag(cfg.data.data_dir)}"
        if cfg.train.sample_prompts == base.train.sample_prompts:
            cfg.train.sample_prompts = ()
    if cfg.autoencoder.kind == "own" and not cfg.autoencoder.path:
        cfg.autoencoder.path = own_autoencoder_dir(cfg)
    cfg.validate()
    return cfg


def own_autoencoder_dir(cfg: Config) -> str:
    """Where `train-autoencoder` writes this experiment's model, and so where `train` looks when autoencoder.path is
    empty: the same preset and --set find each other's folder."""
    return os.path.join(cfg.train.checkpoint_dir, cfg.train.exp_name + AUTOENCODER_SUFFIX, "model")


def folder_tag(folder: str) -> str:
    """A folder's last name as an experiment-name part: letters, digits, '-', '_' and '.' only."""
    name = os.path.basename(os.path.normpath(os.path.abspath(folder)))
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "data"


def format_config(cfg: Config) -> str:
    lines = []
    for section, values in cfg.to_dict().items():
        lines.append(f"[{section}]")
        lines.extend(f"  {name} = {value!r}" for name, value in values.items())
    return "\n".join(lines)
