"""TensorBoard logging in 15 categories (tag prefixes 01_ .. 15_); the training loop only hands it dicts.

When each category is written (N = train.log_every, S = train.stats_every, H = train.hist_every, P = the
trainer's sample steps; every interval also fires on the last step):
  at start   08_Model_Architecture, 15_Configuration, 14_System/device, 06_Diffusion/schedule_snr
  every N    01_Training, 02_Loss_Components, 04_Learning_Rate, 05_Performance, 06_Diffusion, 07_Noise_Analysis,
             14_System (means over the steps since the last write where that makes sense)
  epoch end  03_Epoch_Summary
  every S    09_Parameter_Stats, 11_Gradient_Stats        every H  10_Parameter_Histograms, 06_Diffusion/loss_vs_t
  every P    12_Generated_Samples, 13_Noise_Visualization
Only the main process writes; the writer flushes every FLUSH_SECS seconds and on close. `train.tensorboard=false`
turns all of it off (no run folder). Values are only ever real ones: nothing is logged that was not measured.
"""
from __future__ import annotations

import contextlib
import math
import os
import time

import numpy as np
import torch

from config import TrainConfig
from methods.training import train_stats as ts
from utils.images import clip_grid, frame_strip, png_bytes, scatter_plot, upscale
from utils.distributed import is_main_process, launcher_world
from utils.gif import gif_bytes, safe_filename

CATEGORIES = ("01_Training", "02_Loss_Components", "03_Epoch_Summary", "04_Learning_Rate", "05_Performance",
              "06_Diffusion", "07_Noise_Analysis", "08_Model_Architecture", "09_Parameter_Stats",
              "10_Parameter_Histograms", "11_Gradient_Stats", "12_Generated_Samples", "13_Noise_Visualization",
              "14_System", "15_Configuration")
FLUSH_SECS = 30  # events reach the browser within this many seconds; close() flushes the rest


def new_run_dir(root: str) -> str:
    """A fresh, never-reused run folder (earlier runs' logs are never deleted)."""
    base = os.path.join(root, time.strftime("run-%Y%m%d-%H%M%S"))
    path, n = base, 1
    while os.path.exists(path):
        path, n = f"{base}-{n}", n + 1
    return path


class TBLogger:
    """One run folder's event writer plus the running windows that the logged means are taken over."""

    def __init__(self, run_dir: str, tc: TrainConfig, total_steps: int):
        """Ranks other than 0 of a torchrun job log nothing, as train.tensorboard=false does."""
        self.run_dir, self.total_steps = run_dir, total_steps
        self.enabled = bool(tc.tensorboard) and is_main_process()
        self.log_every, self.stats_every, self.hist_every = tc.log_every, tc.stats_every, tc.hist_every
        self.samples_per_step = tc.batch_size * tc.grad_accum * launcher_world().world_size  # the global batch
        self.warmup, self.base_lr, self.seed = tc.warmup_steps, tc.lr, tc.seed
        self.writer = None
        self.spent_total = 0.0  # wall seconds spent inside this logger (05_Performance, bench_logging.py)

    # ----- plumbing -----
    def due(self, step: int, every: int) -> bool:
        return self.enabled and every > 0 and (step % every == 0 or step == self.total_steps)

    def scalars(self, step: int, prefix: str, values: dict[str, float]) -> None:
        for tag, value in values.items():
            if value is not None and math.isfinite(float(value)):
                self.writer.add_scalar(f"{prefix}/{tag}", float(value), step)

    def image(self, tag: str, step: int, encoded: bytes, shape: tuple[int, ...]) -> None:
        """An image summary holding already-encoded PNG or GIF bytes (a GIF animates in the Images tab)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        img = Summary.Image(height=shape[0], width=shape[1], colorspace=3, encoded_image_string=encoded)
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=img)]), step)

    @contextlib.contextmanager
    def timed(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.spent_total += time.perf_counter() - t0

    # ----- once per train() call -----
    def start(self, step: int, epoch: int, config: dict, model: torch.nn.Module, diffusion, device) -> None:
        """Open the writer and write what does not change during the run: 06 schedule, 08, 14 device, 15."""
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when logging
        from torch.utils.tensorboard.summary import hparams

        os.makedirs(self.run_dir, exist_ok=True)
        # On --resume, events a crashed run wrote after its checkpoint (steps > step) are dropped, not doubled.
        self.writer = SummaryWriter(self.run_dir, flush_secs=FLUSH_SECS, purge_step=step + 1 if step else None)
        self.groups, self.diffusion, self.device = ts.module_groups(model), diffusion, device
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (t, loss_per_sample) per micro-step
        self.last_out: dict | None = None
        self.window = {"t": [], "loss": [], "plot_t": [], "plot_loss": [], "times": {}, "steps": 0,
                       "watch": 0.0, "wall": time.perf_counter(), "spent0": 0.0}
        self.epoch_acc = {"epoch": epoch, "loss": 0.0, "grad": 0.0, "steps": 0, "start": time.perf_counter()}
        with self.timed():
            lines = [f"[{s}]\n" + "\n".join(f"  {k} = {v!r}" for k, v in vals.items()) for s, vals in config.items()]
            self.writer.add_text("15_Configuration/config", "```\n" + "\n".join(lines) + "\n```", step)
            for summary in hparams(ts.flat_hparams(config), {"01_Training/loss": 0.0})[:2]:
                self.writer._get_file_writer().add_summary(summary, step)
            counts = ts.param_counts(self.groups)
            for key, c in counts.items():
                self.scalars(step, "08_Model_Architecture", {f"{kind}_params/{key}": n for kind, n in c.items()})
            table = "| module | total | trainable | frozen |\n|---|---|---|---|\n" + "\n".join(
                f"| {k} | {c['total']:,} | {c['trainable']:,} | {c['frozen']:,} |" for k, c in counts.items())
            self.writer.add_text("08_Model_Architecture/parameters", table, step)
            self.writer.add_text("14_System/device", ts.device_description(device), step)
            self.scalars(step, "14_System", ts.memory_stats(device))
            snr = 10 ** (ts.schedule_snr_db(diffusion) / 10)  # a function of t, so a plot rather than scalars
            plot = scatter_plot(np.arange(snr.size), snr, snr.size - 1,
                                f"SNR(t) = abar/(1-abar), {diffusion.schedule_name} schedule", "t")
            self.image("06_Diffusion/schedule_snr", step, png_bytes(plot), plot.shape)

    # ----- every micro-step / optimizer step -----
    def observe(self, out: dict) -> None:
        """A micro-step's training_losses output (+ "t"): keeps its sampled t and per-sample loss (no copy)."""
        if self.enabled:
            self.pending.append((out["t"].detach(), out["loss_per_sample"].detach()))
            self.last_out = out

    @contextlib.contextmanager
    def watch_update(self, step: int):
        """Wrap clip + optimizer.step(): per-module gradient norms (before clipping), update/weight ratios and
        weight norms when step is due for stats, weight histograms when due for histograms."""
        stats, hist = self.due(step, self.stats_every), self.due(step, self.hist_every)
        if not (stats or hist):
            yield
            return
        t0 = time.perf_counter()
        if stats:
            grads, before = ts.group_norms(ts.grad_tensors(self.groups)), ts.snapshot(self.groups)
        t1 = time.perf_counter()
        yield
        t2 = time.perf_counter()
        if stats:
            ratios = ts.update_ratios(self.groups, before)
            del before
            self.scalars(step, "09_Parameter_Stats", {f"weight_norm/{k}": v for k, v in ts.group_norms(
                {k: list(ps) for k, ps in self.groups.items()}).items()})
            self.scalars(step, "11_Gradient_Stats", {f"grad_norm/{k}": v for k, v in grads.items()})
            self.scalars(step, "11_Gradient_Stats", {f"update_ratio/{k}": v for k, v in ratios.items()})
        if hist:
            for k, ps in self.groups.items():
                self.writer.add_histogram(f"10_Parameter_Histograms/{k}", ts.histogram_values(ps), step)
        watch = (t1 - t0) + (time.perf_counter() - t2)
        self.window["watch"] += watch
        self.spent_total += watch

    def step(self, step: int, values: dict) -> None:
        """After each optimizer step: {"loss", "grad_norm", "lrs": [per group], "times": {phase: s}, "epoch"}."""
        if not self.enabled:
            return
        with self.timed():
            w, e = self.window, self.epoch_acc
            for phase, s in values["times"].items():
                w["times"][phase] = w["times"].get(phase, 0.0) + s
            w["steps"] += 1
            e["loss"], e["grad"] = e["loss"] + values["loss"], e["grad"] + values["grad_norm"]
            e["steps"] += 1
            if values["epoch"] != e["epoch"]:
                self.epoch_summary(step, values["epoch"])
            log, hist = self.due(step, self.log_every), self.due(step, self.hist_every)
            if log or hist:
                self.drain()
            if log:
                self.log_window(step, values)
            if hist and w["plot_t"]:
                t, loss = np.concatenate(w["plot_t"]), np.concatenate(w["plot_loss"])
                plot = scatter_plot(t, loss, self.diffusion.num_timesteps - 1,
                                    f"loss vs sampled t: {t.size} samples up to step {step}", "t")
                self.image("06_Diffusion/loss_vs_t", step, png_bytes(plot), plot.shape)
                w["plot_t"], w["plot_loss"] = [], []

    def drain(self) -> None:
        """Move the micro-steps' (t, loss) tensors to numpy: one device sync per log, not per step."""
        if self.pending:
            t = torch.cat([p[0] for p in self.pending]).cpu().numpy()
            loss = torch.cat([p[1] for p in self.pending]).float().cpu().numpy()
            self.window["t"].append(t)
            self.window["loss"].append(loss)
            if self.hist_every:  # the loss-vs-t plot's points, kept until the next histogram step
                self.window["plot_t"].append(t)
                self.window["plot_loss"].append(loss)
            self.pending = []

    def log_window(self, step: int, values: dict) -> None:
        w, T = self.window, self.diffusion.num_timesteps
        lrs = values["lrs"]
        self.scalars(step, "01_Training", {"loss": values["loss"], "lr": lrs[0], "grad_norm": values["grad_norm"],
                                           "batch_size": self.samples_per_step, "epoch": values["epoch"]})
        lr_values = {f"group_{i}": lr for i, lr in enumerate(lrs)}
        lr_values.update(schedule_factor=lrs[0] / self.base_lr, schedule_progress=step / max(1, self.total_steps),
                         warmup_progress=min(1.0, step / self.warmup) if self.warmup else 1.0)
        self.scalars(step, "04_Learning_Rate", lr_values)
        if w["t"]:
            t, loss = np.concatenate(w["t"]), np.concatenate(w["loss"])
            finite = loss[np.isfinite(loss)]
            buckets = {f"loss_{k}": v for k, v in ts.timestep_buckets(t, loss, T).items()}
            self.scalars(step, "02_Loss_Components", {"total": finite.mean() if finite.size else None, **buckets})
            # Exact per-t counts of the timesteps training sampled since the last write (one bin per t).
            self.writer.add_histogram("06_Diffusion/timesteps", t, step, bins=np.arange(T + 1) - 0.5)
            snr = ts.schedule_snr_db(self.diffusion)
            self.scalars(step, "06_Diffusion", {"t_mean": t.mean(), "t_min": t.min(), "t_max": t.max(),
                                                "sampled_snr_db_mean": snr[t].mean()})
            w["t"], w["loss"] = [], []
        if self.last_out is not None:
            stats = ts.noise_stats(self.diffusion, self.last_out)
            self.scalars(step, "02_Loss_Components", {"mse": stats.pop("mse"), "mae": stats.pop("mae")})
            self.scalars(step, "07_Noise_Analysis", stats)
            self.last_out = None
        times = dict(w["times"])
        times["optimizer"] = times.get("optimizer", 0.0) - w["watch"]  # stats time is logging, not optimizer
        step_s, n, spent = sum(times.values()), w["steps"], self.spent_total - w["spent0"]
        wall = time.perf_counter() - w["wall"]
        self.scalars(step, "05_Performance", {
            **{f"{phase}_s": s / n for phase, s in times.items()}, "step_time_s": step_s / n,
            "steps_per_s": n / wall, "samples_per_s": n * self.samples_per_step / wall,
            "peak_memory_mb": ts.peak_memory_mb(self.device), "logging_s_per_step": spent / n,
            "logging_overhead_pct": 100 * spent / step_s if step_s > 0 else None})
        self.scalars(step, "14_System", ts.memory_stats(self.device))
        w.update(times={}, steps=0, watch=0.0, wall=time.perf_counter(), spent0=self.spent_total)

    def epoch_summary(self, step: int, epoch: int) -> None:
        e = self.epoch_acc
        self.scalars(step, "03_Epoch_Summary", {
            "mean_loss": e["loss"] / e["steps"], "mean_grad_norm": e["grad"] / e["steps"],
            "epoch_time_s": time.perf_counter() - e["start"], "optimizer_steps": e["steps"], "epoch": epoch - 1})
        e.update(epoch=epoch, loss=0.0, grad=0.0, steps=0, start=time.perf_counter())

    # ----- at the trainer's sample steps -----
    def samples(self, step: int, clips: np.ndarray, prompts: list[str], duration_ms: int = 100) -> None:
        """12_Generated_Samples: per prompt an animated GIF, a static frame strip and the caption as text."""
        if not self.enabled:
            return
        with self.timed():
            for i, (clip, prompt) in enumerate(zip(clips, prompts)):
                tag = f"12_Generated_Samples/{i}_{safe_filename(prompt, 40)}"
                big = upscale(clip, 128)
                self.image(f"{tag}/animated", step, gif_bytes(big, duration_ms), big.shape[1:])
                strip = frame_strip(upscale(clip, 48))
                self.image(f"{tag}/frames", step, png_bytes(strip), strip.shape)
                self.writer.add_text(f"{tag}/caption", f"{prompt} (step {step}, {len(clip)} frames)", step)

    def denoising(self, step: int, model: torch.nn.Module, x0: torch.Tensor, text, duration_ms: int = 100,
                  decode=None) -> None:
        """13_Noise_Visualization: one training clip noised to a few t; rows = t, columns = x_t | predicted x0 |
        target x0 (a latent model's decoded by `decode`). Uses the model in eval mode under no_grad and its own
        seeded generator."""
        if not self.enabled:
            return
        with self.timed():
            p = ts.denoise_panels(model, self.diffusion, x0, text, self.seed, decode=decode)
            rows = [[upscale(p[key][i], 64) for key in ("x_t", "x0_pred", "x0")] for i in range(len(p["t"]))]
            grid = clip_grid(rows)
            self.image("13_Noise_Visualization/xt_pred_x0_target", step, gif_bytes(grid, duration_ms), grid.shape[1:])
            middle = grid[len(grid) // 2]
            self.image("13_Noise_Visualization/middle_frame", step, png_bytes(middle), middle.shape)
            legend = "columns: x_t | predicted x0 | target x0\n\n" + "\n".join(
                f"- row {i}: t = {t}, loss {loss:.4f}" for i, (t, loss) in enumerate(zip(p["t"], p["loss"])))
            self.writer.add_text("13_Noise_Visualization/legend", legend, step)

    def close(self) -> None:
        if self.writer is not None:
            from torch.utils.tensorboard.summary import hparams

            with self.timed():
                self.writer._get_file_writer().add_summary(hparams({}, {})[2])  # session end (status: success)
                self.writer.flush()
                self.writer.close()
                self.writer = None
