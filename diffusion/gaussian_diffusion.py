"""Gaussian diffusion on a T-step subsampled schedule: forward noising, training loss, DDIM, DPM-Solver++(2M) and DDPM
sampling.

Follows the structure of facebookresearch/DiT's `GaussianDiffusion`, trimmed to what Text2Sign uses: fixed (not
learned) variances, an eps- or v-predicting network, and an MSE loss. Schedule tensors are kept as float64 masters
(from `schedulers.make_schedule`) and copied to the device/dtype of the data on first use, so a single instance
serves CPU and GPU alike. Time is passed around as step indices t in 0..T-1; only the network sees the 1000-scale
`model_time(t)` that the pretrained backbone expects.
"""
from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from config import DiffusionConfig
from schedulers import make_schedule

PREDICTIONS = ("eps", "v")
SAMPLERS = ("ddim", "dpm++2m", "ddpm")

ModelFn = Callable[..., torch.Tensor]


class GaussianDiffusion:
    """Forward process, loss and samplers for one schedule and parametrisation."""

    def __init__(self, schedule: str = "cosine", timesteps: int = 50, prediction: str = "eps",
                 min_snr_gamma: float = 0.0, motion_weight: float = 0.0, frame_noise_correlation: float = 0.0,
                 timestep_shift: float = 1.0):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {list(PREDICTIONS)}")
        if min_snr_gamma < 0:
            raise ValueError(f"min_snr_gamma must be >= 0, got {min_snr_gamma}")
        if motion_weight < 0:
            raise ValueError(f"motion_weight must be >= 0, got {motion_weight}")
        if not 0 <= frame_noise_correlation < 1:
            raise ValueError(f"frame_noise_correlation must be in [0, 1), got {frame_noise_correlation}")
        if not timestep_shift > 0:
            raise ValueError(f"timestep_shift must be > 0, got {timestep_shift}")
        self.min_snr_gamma, self.motion_weight, self.timestep_shift = min_snr_gamma, motion_weight, timestep_shift
        self.frame_noise_correlation = frame_noise_correlation
        self.schedule = make_schedule(schedule, timesteps)
        self.schedule_name = schedule
        self.num_timesteps = timesteps
        self.prediction = prediction

        betas = self.schedule.betas
        alphas_cumprod = self.schedule.alphas_cumprod
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        self._masters = {
            # A trailing 1 so that index -1 (DDIM's "step before the first", i.e. the clean image) reads ᾱ = 1.
            "alphas_cumprod": torch.cat([alphas_cumprod, alphas_cumprod.new_ones(1)]),
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
            "sqrt_recip_alphas_cumprod": (1 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1 / alphas_cumprod - 1).sqrt(),
            # q(x_{t-1} | x_t, x_0) = N(coef1 * x_0 + coef2 * x_t, posterior_variance); the variance is 0 at t = 0
            # because ᾱ_{-1} = 1, which is what makes the last DDPM step noise-free.
            "posterior_variance": betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod),
            "posterior_mean_coef2": (1 - alphas_cumprod_prev) * (1 - betas).sqrt() / (1 - alphas_cumprod),
            "model_timesteps": self.schedule.model_timesteps,
            "half_log_snr": 0.5 * self.schedule.snr.log(),  # DPM-Solver's time: lambda = log(sqrt(ᾱ) / sqrt(1 - ᾱ))
            "loss_weight": self._loss_weights(self.schedule.snr, prediction, min_snr_gamma),
        }
        self._copies: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    @classmethod
    def from_config(cls, dc: DiffusionConfig) -> "GaussianDiffusion":
        """The process a DiffusionConfig (diffusion section of config.py) describes."""
        return cls(dc.schedule, dc.timesteps, dc.prediction, dc.min_snr_gamma, dc.motion_weight,
                   dc.frame_noise_correlation, dc.timestep_shift)

    def __repr__(self) -> str:
        return (f"GaussianDiffusion(schedule={self.schedule_name!r}, timesteps={self.num_timesteps}, "
                f"prediction={self.prediction!r})")

    # ----------------------------------------------------------------------------------------------------------
    # schedule lookup

    def _table(self, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (name, torch.device(device), dtype)
        if key not in self._copies:
            self._copies[key] = self._masters[name].to(device=device, dtype=dtype)
        return self._copies[key]

    def _coef(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Schedule value per sample, shaped (B, 1, ..., 1) to broadcast against x.

        float64 data (tests, analysis) gets float64 coefficients; everything else float32, which also keeps bf16
        model outputs from dragging the sampler state down to bf16.
        """
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        values = self._table(name, x.device, dtype)[t.to(x.device)]
        return values.reshape(-1, *([1] * (x.ndim - 1)))

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The network's float timestep s_k (0..999 scale) for step indices t, on t's device."""
        return self._table("model_timesteps", t.device, torch.float32)[t]

    def sample_timesteps(self, batch: int, generator: torch.Generator | None = None,
                         device: torch.device | str | None = None) -> torch.Tensor:
        """Training step indices in 0..T-1, drawn on CPU so a seeded generator gives the same draw on any device:
        uniform, or with timestep_shift k != 1 the uniform u in [0, 1) mapped to k u / (1 + (k - 1) u) (Esser et al.
        2024's resolution shift): k times the uniform density at the noisy end, 1 / k at the clean end."""
        if self.timestep_shift == 1:
            return torch.randint(0, self.num_timesteps, (batch,), generator=generator).to(device)
        k, u = self.timestep_shift, torch.rand(batch, generator=generator)
        shifted = k * u / (1 + (k - 1) * u)  # (batch,) in [0, 1)
        return (shifted * self.num_timesteps).long().clamp(0, self.num_timesteps - 1).to(device)

    # ----------------------------------------------------------------------------------------------------------
    # forward process and training

    def correlate_frames(self, noise: torch.Tensor, rho: float | None = None) -> torch.Tensor:
        """i.i.d. noise (B, C, T, H, W) -> noise whose frames share a part: each pixel still N(0, 1), frame pairs
        correlated by rho = frame_noise_correlation (the mixed noise prior of PYoCo, Ge et al. 2023).

        Noise drawn independently per frame is what the network must remove frame by frame; whatever it leaves (an
        undertrained model leaves a lot) is flicker. Computed as the symmetric square root of the frame covariance
        (1 - rho) I + rho 11^T applied to the draw: sqrt(1 - rho) eps + (sqrt(1 - rho + rho T) - sqrt(1 - rho))
        mean_T(eps), so the random streams are the same as without it and rho = 0 returns noise unchanged.
        """
        rho = self.frame_noise_correlation if rho is None else rho
        if rho == 0:
            return noise
        T = noise.shape[2]
        a, b = (1 - rho) ** 0.5, (1 - rho + rho * T) ** 0.5
        return a * noise + (b - a) * noise.mean(dim=2, keepdim=True)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) noise."""
        return (self._coef("sqrt_alphas_cumprod", t, x0) * x0
                + self._coef("sqrt_one_minus_alphas_cumprod", t, x0) * noise)

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network regresses: eps itself, or v = sqrt(ᾱ_t) eps - sqrt(1 - ᾱ_t) x0."""
        if self.prediction == "eps":
            return noise
        return (self._coef("sqrt_alphas_cumprod", t, x0) * noise
                - self._coef("sqrt_one_minus_alphas_cumprod", t, x0) * x0)

    @staticmethod
    def _loss_weights(snr: torch.Tensor, prediction: str, gamma: float) -> torch.Tensor:
        """Min-SNR-γ (Hang et al., 2023): the x0-space weight min(SNR, γ), expressed for the eps or v target.

        An eps-MSE equals an x0-MSE weighted by SNR and a v-MSE one weighted by SNR + 1, hence the divisions.
        Capping the weight stops nearly-clean steps from dominating training; gamma = 0 keeps the plain MSE.
        """
        if gamma == 0:
            return torch.ones_like(snr)
        return snr.clamp(max=gamma) / (snr if prediction == "eps" else snr + 1)

    @staticmethod
    def motion_weights(x0: torch.Tensor, strength: torch.Tensor | float) -> torch.Tensor:
        """Per-pixel loss weights (B, 1, T, H, W) of mean 1 per clip: 1 + strength x (the pixel's distance from its
        own temporal mean, relative to the clip's average distance), normalised; strength is a number or (B,).

        In sign clips the moving pixels are the hands and arms, a small part of the frame, and they carry the whole
        caption; a plain MSE spends most of its weight on the static signer and background. A clip with no motion
        gets uniform weights.
        """
        x0 = x0.float()
        dist = (x0 - x0.mean(dim=2, keepdim=True)).abs().mean(dim=1, keepdim=True)  # (B, 1, T, H, W)
        rel = dist / (dist.flatten(1).mean(dim=1).view(-1, 1, 1, 1, 1) + 1e-6)
        w = 1 + torch.as_tensor(strength, dtype=torch.float32, device=x0.device).reshape(-1, 1, 1, 1, 1) * rel
        return w / w.flatten(1).mean(dim=1).view(-1, 1, 1, 1, 1)

    def training_losses(self, model_fn: ModelFn, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                        **model_kwargs) -> dict[str, torch.Tensor]:
        """MSE between the network output and `target` per sample (min-SNR and motion weighted if configured), batch
        mean; mse_per_sample stays the plain MSE. noise is i.i.d.: the frame correlation, if any, is applied here."""
        noise = self.correlate_frames(noise)
        x_t = self.q_sample(x0, t, noise)
        pred = model_fn(x_t, self.model_time(t), **model_kwargs)
        target = self.target(x0, t, noise)
        # float32 loss even when the model ran in bf16: the mean over a whole video is a long sum.
        sq_err = (pred.float() - target.float()).pow(2)
        mse_per_sample = sq_err.flatten(1).mean(dim=1)
        weighted = mse_per_sample
        if self.motion_weight:
            # full strength where the sample is mostly noise (the network decides what moves where: the caption's
            # content), fading to a plain MSE as the noise vanishes (removing the last noise matters everywhere)
            strength = self.motion_weight * (1 - self._table("alphas_cumprod", t.device, torch.float32)[t])
            weighted = (sq_err * self.motion_weights(x0, strength)).flatten(1).mean(dim=1)
        loss_per_sample = weighted * self._table("loss_weight", t.device, torch.float32)[t]
        return {"loss": loss_per_sample.mean(), "loss_per_sample": loss_per_sample, "mse_per_sample": mse_per_sample,
                "pred": pred, "target": target, "x_t": x_t}

    # ----------------------------------------------------------------------------------------------------------
    # reverse process

    def predict_x0_eps(self, x_t: torch.Tensor, t: torch.Tensor, model_out: torch.Tensor,
                       clip_x0: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) from the network output under either parametrisation.

        With clip_x0 the estimate is clamped to the data range [-1, 1] and eps is recomputed from the clamped x0, so
        the pair stays consistent with x_t (x_t = sqrt(ᾱ) x0_hat + sqrt(1 - ᾱ) eps_hat) and samplers stay on track.
        """
        if self.prediction == "eps":
            eps = model_out
            x0 = (self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                  - self._coef("sqrt_recipm1_alphas_cumprod", t, x_t) * eps)
        else:
            sqrt_ab = self._coef("sqrt_alphas_cumprod", t, x_t)
            sqrt_1m_ab = self._coef("sqrt_one_minus_alphas_cumprod", t, x_t)
            x0 = sqrt_ab * x_t - sqrt_1m_ab * model_out
            eps = sqrt_1m_ab * x_t + sqrt_ab * model_out
        if clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = ((self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0)
                   / self._coef("sqrt_recipm1_alphas_cumprod", t, x_t))
        return x0, eps

    def ddim_step(self, x_t: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, model_out: torch.Tensor,
                  eta: float, noise: torch.Tensor | None = None, clip_x0: bool = True) -> torch.Tensor:
        """One DDIM update (Song et al., 2021, eq. 12) from step index t to t_prev < t; t_prev = -1 means x0.

        sigma = eta * sqrt((1 - ᾱ_prev) / (1 - ᾱ_t)) * sqrt(1 - ᾱ_t / ᾱ_prev); eta = 0 is deterministic, eta = 1
        matches the DDPM posterior variance. `noise` defaults to torch.randn_like (not seedable); pass it in for
        reproducible stochastic sampling.
        """
        x0, eps = self.predict_x0_eps(x_t, t, model_out, clip_x0=clip_x0)
        alpha_bar = self._coef("alphas_cumprod", t, x_t)
        alpha_bar_prev = self._coef("alphas_cumprod", t_prev, x_t)
        sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar)).sqrt() * (1 - alpha_bar / alpha_bar_prev).sqrt()
        # eta > 1 would push the direction coefficient's square below 0; clamping keeps the update finite.
        dir_coef = (1 - alpha_bar_prev - sigma ** 2).clamp(min=0).sqrt()
        x_prev = alpha_bar_prev.sqrt() * x0 + dir_coef * eps
        if eta > 0:
            x_prev = x_prev + sigma * (torch.randn_like(x_t) if noise is None else noise)
        return x_prev

    def dpm_step(self, x_t: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, x0: torch.Tensor,
                 last: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """One DPM-Solver++(2M) update (Lu et al., 2022, algorithm 2) of the probability-flow ODE from step index t to
        t_prev < t (-1: x0), given this step's x0 estimate and `last` = (x0 estimate, step index) of the step before.

        In log-SNR time lambda = log(alpha / sigma), with h = lambda_prev - lambda_t:
        x_prev = (sigma_prev / sigma_t) x_t - alpha_prev (e^-h - 1) D, where D = x0 (first order: DDIM's update) or,
        with `last`, x0 extrapolated linearly in lambda from the previous estimate: (1 + 1 / 2r) x0 - (1 / 2r) x0_last,
        r = h_last / h. The step to t_prev = -1 (sigma 0) returns x0, first order as DDIM's last step does: an
        extrapolation there only amplifies the last estimates' difference (the `lower_order_final` of diffusers).
        """
        if bool((t_prev < 0).all()):
            return x0
        lam_t = self._coef("half_log_snr", t, x_t)
        h = self._coef("half_log_snr", t_prev, x_t) - lam_t
        d = x0
        if last is not None:
            x0_last, t_last = last
            r = (lam_t - self._coef("half_log_snr", t_last, x_t)) / h
            d = x0 + (x0 - x0_last) / (2 * r)
        sigma_ratio = self._coef("sqrt_one_minus_alphas_cumprod", t_prev, x_t) / self._coef(
            "sqrt_one_minus_alphas_cumprod", t, x_t)
        return sigma_ratio * x_t - self._coef("sqrt_alphas_cumprod", t_prev, x_t) * torch.expm1(-h) * d

    def ddpm_step(self, x_t: torch.Tensor, t: torch.Tensor, model_out: torch.Tensor,
                  noise: torch.Tensor | None = None, clip_x0: bool = True) -> torch.Tensor:
        """One ancestral step x_t -> x_{t-1} ~ N(posterior mean, posterior variance β̃_t).

        β̃_0 = 0, so the final step (t = 0) returns the posterior mean, i.e. the x0 estimate, with no noise.
        """
        x0, _ = self.predict_x0_eps(x_t, t, model_out, clip_x0=clip_x0)
        mean = self._coef("posterior_mean_coef1", t, x_t) * x0 + self._coef("posterior_mean_coef2", t, x_t) * x_t
        std = self._coef("posterior_variance", t, x_t).sqrt()
        return mean + std * (torch.randn_like(x_t) if noise is None else noise)

    def sampling_timesteps(self, steps: int | None = None, sampler: str = "ddim") -> list[int]:
        """Descending step indices a sampler visits; DDIM's and DPM-Solver's subsets always include T-1 and 0."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")
        T = self.num_timesteps
        if sampler == "ddpm":
            # Ancestral sampling uses the one-step posterior, so it cannot skip steps.
            if steps is not None and steps != T:
                raise ValueError(f"ddpm sampling runs all {T} steps; got steps={steps} (use ddim to skip steps)")
            return list(range(T - 1, -1, -1))
        steps = T if steps is None else steps
        if not 1 <= steps <= T:
            raise ValueError(f"{sampler} steps must be in [1, {T}], got {steps}")
        return torch.linspace(T - 1, 0, steps).round().long().unique_consecutive().tolist()

    @torch.no_grad()
    def sample(self, model_fn: ModelFn, shape: tuple[int, ...] | torch.Size, steps: int | None = None,
               sampler: str = "ddim", eta: float = 0.0,
               generator: torch.Generator | list[torch.Generator] | None = None,
               device: torch.device | str = "cpu", clip_x0: bool = True, progress: bool = False,
               noise_correlation: float | None = None) -> torch.Tensor:
        """Draw x0 samples of `shape` (batch first) by running the reverse process from pure noise.

        `noise_correlation`: the share of the noise a clip's frames have in common (`correlate_frames`; default:
        training's frame_noise_correlation). Above training's it flickers less (SamplingSettings picks it).

        All noise is drawn on CPU from `generator` and then moved, so a seed gives the same samples on any device.
        A list of generators, one per sample, makes each sample's noise independent of what it is batched with.
        `model_fn(x_t, model_time)` returns the raw network output; classifier-free guidance belongs inside it.
        """
        timesteps = self.sampling_timesteps(steps, sampler)
        rho = self.frame_noise_correlation if noise_correlation is None else noise_correlation
        if not 0 <= rho < 1:
            raise ValueError(f"noise_correlation must be in [0, 1), got {rho}")
        x = self.correlate_frames(draw_noise(shape, generator), rho).to(device)
        needs_noise = sampler == "ddpm" or (sampler == "ddim" and eta > 0)
        last = None  # DPM-Solver's (x0 estimate, step index) of the step before
        for i, step in enumerate(tqdm(timesteps, desc=f"{sampler} sampling", disable=not progress, leave=False)):
            t = torch.full((shape[0],), step, dtype=torch.long, device=device)
            model_out = model_fn(x, self.model_time(t))
            noise = self.correlate_frames(draw_noise(shape, generator), rho).to(device) if needs_noise else None
            t_prev = torch.full_like(t, timesteps[i + 1] if i + 1 < len(timesteps) else -1)
            if sampler == "ddpm":
                x = self.ddpm_step(x, t, model_out, noise=noise, clip_x0=clip_x0)
            elif sampler == "dpm++2m":
                x0, _ = self.predict_x0_eps(x, t, model_out, clip_x0=clip_x0)
                x, last = self.dpm_step(x, t, t_prev, x0, last), (x0, t)
            else:
                x = self.ddim_step(x, t, t_prev, model_out, eta, noise=noise, clip_x0=clip_x0)
        return x


def draw_noise(shape, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise on CPU; with one generator per sample, row i comes from generator i alone."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in generator])
    return torch.randn(shape, generator=generator)
