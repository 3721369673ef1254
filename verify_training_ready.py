"""Is the configured model ready to train? One real batch, a forward pass, a few probe training steps, checks.

    python verify_training_ready.py [--preset P] [--set field=value ...] [--max-steps N]

Builds everything the way `main.py train` does (data, cached caption embeddings, model, pretrained weights with
their loading report, device, precision, AdamW), takes the first clips of the training split as one batch and
prints one line per check; exit 0 when all pass, 1 when any fails. Nothing is saved.

Why probe steps: DiT's adaLN-Zero init makes a freshly initialised model output exactly zero and ignore its text,
and gradients reach it in stages: in step 1 only the final layer gets one, in step 2 the blocks and the patch
embedding, in step 3 the conditioning (timestep and text) embedders. So the model is trained on the same batch at
the configured learning rate (no warmup) until a gradient has reached every checked module, at most --max-steps
times (pretrained weights: 1 step). The checks:

- forward: the first forward pass returns a finite tensor of the input's shape.
- loss finite: the training loss (diffusion.training_losses, as in the trainer) of the first step.
- gradient reaches the patch embedding / text projection / final layer: a finite, non-zero gradient within the
  probe steps. A frozen module (requires_grad=False) or a cut graph never gets one.
- output not all-zero, output std: after the probe steps, the prediction is finite, not identically zero (the
  "black output" trap) and its std lies in [1e-3, 1e2] (the epsilon target has std 1).
- text changes the prediction: two different captions, same noisy clip and timestep, give predictions that differ
  by more than 1e-5 relative (a model that drops its text gives identical outputs).
- text tokens change the prediction (with model.cross_attention): the same with only the token sequence swapped,
  pooled vector kept: the cross-attention path is wired.
"""
from __future__ import annotations

import math
import sys

import torch

from methods.training.preflight import FAIL, PASS, Checks, check_config, format_count, parse_args

STD_RANGE = (1e-3, 1e2)
MIN_TEXT_EFFECT = 1e-5


def build_trainer(cfg):
    """The trainer's own construction: same data, embeddings, model, pretrained loading, device and optimizer."""
    from data.synth import ensure_data
    from methods.training.trainer import Trainer

    ensure_data(cfg.data)
    trainer = Trainer(cfg)
    n = sum(p.numel() for p in trainer.model.parameters())
    precision = "bf16 autocast" if trainer.amp_dtype is not None else "fp32"
    return PASS, (f"{cfg.model.arch} ({format_count(n)} parameters) on {trainer.device}, {precision}, "
                  f"{len(trainer.data)} training clips, pretrained: {cfg.model.pretrained or 'none (random init)'}"
                  ), trainer


def two_captions(trainer) -> tuple[int, int]:
    """Indices of two different captions in the trainer's embedding table (training captions, then prompts)."""
    names = trainer.captions.names
    for j in range(1, len(names)):
        if names[j] != names[0]:
            return 0, j
    raise ValueError("need two different captions (data captions or train.sample_prompts)")


class Probe:
    """One fixed batch, timestep draw and noise; predictions of the trainer's model for chosen captions."""

    def __init__(self, trainer, seed: int = 0):
        self.trainer = tr = trainer
        n = min(trainer.cfg.train.batch_size, len(trainer.data))
        self.videos, ids = tr.data.get_batch(torch.arange(n), device=tr.device)
        self.text = tr.text.select(ids)
        g = torch.Generator().manual_seed(seed)
        self.t = tr.diffusion.sample_timesteps(n, generator=g).to(tr.device)
        self.noise = torch.randn(self.videos.shape, generator=g).to(tr.device)
        self.x_t = tr.diffusion.q_sample(self.videos, self.t, self.noise)

    def loss(self) -> torch.Tensor:
        from utils.device import autocast

        tr, text = self.trainer, self.text
        with autocast(tr.device, tr.amp_dtype):
            return tr.diffusion.training_losses(tr.model, self.videos, self.t, self.noise, text_tokens=text.tokens,
                                                text_mask=text.mask, pooled=text.pooled)["loss"]

    @torch.no_grad()
    def predict(self, token_id: int, pooled_id: int | None = None) -> torch.Tensor:
        """Prediction for every clip of the batch with caption token_id (and, if given, another pooled vector)."""
        from utils.device import autocast

        tr, n = self.trainer, self.videos.shape[0]
        ids = torch.full((n,), token_id, dtype=torch.long, device=tr.device)
        text = tr.text.select(ids)
        pooled = text.pooled if pooled_id is None else tr.text.select(torch.full_like(ids, pooled_id)).pooled
        with autocast(tr.device, tr.amp_dtype):
            out = tr.model(self.x_t, tr.diffusion.model_time(self.t), text.tokens, text.mask, pooled)
        return out.float()


def probe_steps(trainer, probe: Probe, checks: Checks, max_steps: int) -> None:
    """Train on the probe batch until each of the model's GRAD_PROBES (its input, text and output layers) has had a
    non-zero gradient (or max_steps)."""
    params, targets = dict(trainer.model.named_parameters()), type(trainer.model).GRAD_PROBES
    for group in trainer.optimizer.param_groups:
        group["lr"] = trainer.cfg.train.lr  # the warmup's first lr is ~0: probe with the configured peak lr
    first_seen: dict[str, tuple[int, float]] = {}
    trainer.model.train()
    for step in range(1, max_steps + 1):
        trainer.optimizer.zero_grad(set_to_none=True)
        loss = probe.loss()
        if step == 1 and not checks.expect("loss finite", math.isfinite(loss.item()), f"{loss.item():.4f}"):
            break
        loss.backward()
        for label, key in targets.items():
            grad = params[key].grad
            if label not in first_seen and grad is not None and bool(grad.isfinite().all()) and grad.any():
                first_seen[label] = (step, grad.norm().item())
        trainer.optimizer.step()
        if len(first_seen) == len(targets):
            break
    for label, key in targets.items():
        if label in first_seen:
            step, norm = first_seen[label]
            checks.record(PASS, f"gradient reaches the {label}", f"{key}: |grad| {norm:.2e} at probe step {step}")
        else:
            why = "frozen (requires_grad=False)" if not params[key].requires_grad else "zero or non-finite"
            checks.record(FAIL, f"gradient reaches the {label}", f"{key}: {why} in all {step} probe step(s)")


def text_effect(a: torch.Tensor, b: torch.Tensor) -> float:
    """mean |a - b| / mean |a|: how much the prediction moved when only the text changed."""
    return ((a - b).abs().mean() / a.abs().mean().clamp(min=1e-12)).item()


def verify(trainer, checks: Checks, max_steps: int = 3) -> None:
    probe = Probe(trainer)
    trainer.model.eval()
    out = probe.predict(0)
    peak = out.abs().max().item()
    checks.expect("forward", out.shape == probe.videos.shape and bool(out.isfinite().all()),
                  f"output {tuple(out.shape)}, finite: {bool(out.isfinite().all())}, max |out| before training "
                  f"{peak:.3g}" + (" (exactly 0 is expected at random init: adaLN-Zero)" if peak == 0 else ""))
    probe_steps(trainer, probe, checks, max_steps)

    trainer.model.eval()
    a, b = two_captions(trainer)
    out_a, out_b = probe.predict(a), probe.predict(b)
    finite = bool(out_a.isfinite().all())
    checks.expect("output finite", finite, f"after the probe steps, {out_a.numel()} values")
    checks.expect("output not all-zero", bool(out_a.any()), f"max |out| {out_a.abs().max().item():.3g}")
    std = out_a.std().item() if finite else float("nan")
    checks.expect("output std", STD_RANGE[0] <= std <= STD_RANGE[1],
                  f"{std:.3g} (sane range {STD_RANGE[0]:g}..{STD_RANGE[1]:g}; the noise target has std 1)")
    names = trainer.captions.names
    effect = text_effect(out_a, out_b)
    checks.expect("text changes the prediction", effect > MIN_TEXT_EFFECT,
                  f"{names[a]!r} vs {names[b]!r}: mean |diff| / mean |out| = {effect:.2e} "
                  f"(needs > {MIN_TEXT_EFFECT:g})")
    if trainer.cfg.model.cross_attention:
        effect = text_effect(out_a, probe.predict(b, pooled_id=a))
        checks.expect("text tokens change the prediction", effect > MIN_TEXT_EFFECT,
                      f"tokens of {names[b]!r}, pooled vector of {names[a]!r}: relative change {effect:.2e} "
                      f"(cross-attention)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv, lambda p: p.add_argument(
        "--max-steps", type=int, default=3, help="most probe training steps (default 3: adaLN-Zero needs 3)"))
    checks = Checks()
    cfg = checks.run("config", check_config, args.preset, args.overrides)
    trainer = checks.run("setup", build_trainer, cfg) if cfg is not None else None
    if trainer is not None:
        try:
            verify(trainer, checks, max(1, args.max_steps))
        except Exception as err:  # report where it broke as a failed check, with the one-line reason
            checks.record(FAIL, "probe", f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}")
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
