"""The training loop: batch -> loss -> backward -> clip -> step -> EMA -> log -> checkpoint.

Everything random in a step (data order, timesteps, noise, caption dropout) comes from the seed, the epoch and
one saved torch.Generator, so `--resume` continues the exact sequence an uninterrupted run would have produced.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
from dataclasses import dataclass

import torch
from tqdm import tqdm

from config import Config, TrainConfig
from data.folder import caption_words
from data.latents import LatentDataset
from dataset import SignDataset
from diffusion import GaussianDiffusion
from methods.checkpoint import load_weights, nonfinite_summary, rng_state, save_checkpoint, set_rng_state
from methods.training.experiment import (ExperimentLock, check_memory, output_dirs, refuse_to_overwrite,
                                         remove_stale_temp_files)
from methods import ground_truth
from methods.ground_truth import scorable
from methods.synth_truth import truth_source
from methods.pipeline import SignPipeline
from methods.training.stop import STOP_SIGNALS, StopRequest
from methods.training.tb_logger import TBLogger, new_run_dir
from methods.training.train_stats import StepClock
from models import build_video_model, load_initial_weights
from models.autoencoder import load_autoencoder
from models.registry import check_autoencoder
from models.text_encoder import embed_captions
from schedulers import lr_factor
from utils.device import autocast, autocast_dtype, configure_matmul, select_device
from utils.distributed import World, agree, all_gather, all_reduce_sum, init_world, launcher_world, main_first, wrap_ddp
from utils.errors import UserError
from utils.folders import check_output_dirs

MAX_NONFINITE_SKIPS = 5  # skipped steps (non-finite loss or gradient) before the run stops


def planned_steps(tc: TrainConfig, num_clips: int, world_size: int = 1) -> int:
    """Optimizer steps a run of `num_clips` training clips will take: train.epochs, capped by train.max_steps. A
    micro-batch is batch_size clips on each of world_size processes."""
    limit = math.ceil(tc.epochs * math.ceil(num_clips / (tc.batch_size * world_size)) / tc.grad_accum)
    return min(limit, tc.max_steps) if tc.max_steps else limit


def row_noise(seed: int, rows: range, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Noise (len(rows), *shape) where row i of a global batch is drawn from seed + i alone: a process draws only
    the rows it trains on, on its own device, and the same row gets the same noise whatever the process count."""
    out = torch.empty((len(rows), *shape), device=device)
    for j, i in enumerate(rows):
        torch.randn(shape, generator=torch.Generator(device).manual_seed(seed + i), device=device, out=out[j])
    return out


@dataclass
class CaptionTable:
    """Rows of the trainer's text-embedding table: the training captions (row = caption id), then the prompts."""
    vocab: list[str]
    prompts: list[str]

    @property
    def names(self) -> list[str]:
        return self.vocab + self.prompts

    def prompt_rows(self) -> torch.Tensor:
        return torch.arange(len(self.vocab), len(self.vocab) + len(self.prompts))


class Trainer:
    """Owns the model, its EMA copy, optimizer, schedule, data order and random streams of one experiment.

    Under torchrun each process is one rank: every rank holds the same weights and the same trainer stream, takes its
    shard of each global micro-batch (batch_size x world_size clips), and DistributedDataParallel averages the
    gradients; rank 0 alone writes checkpoints, logs and GIFs."""

    def __init__(self, cfg: Config, resume: dict | None = None, quiet: bool = False, world: World | None = None):
        self.cfg, tc = cfg, cfg.train
        self.device = select_device(tc.device, launcher_world().local_rank)
        self.world = world or init_world(self.device)
        self.quiet = quiet or not self.world.is_main
        self.amp_dtype = autocast_dtype(self.device, tc.precision)
        configure_matmul(tc.tf32)
        with main_first(self.world):  # rank 0 decodes the clips and embeds the captions into the caches first
            check_output_dirs({"data.cache_dir": cfg.data.cache_dir})
            self.autoencoder = load_autoencoder(cfg.autoencoder, self.device)  # None: pixel space; before the data
            if self.autoencoder is not None:  # (a missing one is an error in a second, not after decoding every clip)
                check_autoencoder(cfg, self.autoencoder)
            self.data = SignDataset(cfg.data, "train", quiet=self.quiet)
            if self.autoencoder is not None:  # train on latents, each clip encoded once into the latent cache
                self.data = LatentDataset(self.data, self.autoencoder, self.device, quiet=self.quiet)
            # Prompts are embedded alongside the training captions, so sampling never loads the encoder again.
            prompts = list(tc.sample_prompts) or self.data.top_captions(3)  # empty: captions the data set holds
            self.captions = CaptionTable(list(self.data.caption_vocab), prompts)
            self.text = embed_captions(cfg.text.encoder, cfg.text.max_length, self.captions.names,
                                       cfg.data.cache_dir).to(self.device)
        self.text_dim = self.text.pooled.shape[1]
        torch.manual_seed(tc.seed)
        self.model = build_video_model(cfg, self.text_dim)
        report = load_initial_weights(self.model, cfg) if resume is None else None
        if report and not self.quiet:
            print(report, file=sys.stderr)
        check_memory(cfg, self.model, self.device)  # before the EMA copy and the optimizer state are allocated
        self.model.to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.net = self.ddp = wrap_ddp(self.model, self.world, self.device)  # what the loss calls
        if tc.compile:
            self.net = torch.compile(self.ddp)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        fused = tc.fused_adamw and self.device.type == "cuda"
        # off CUDA torch defaults to a Python loop over the tensors; foreach is the same arithmetic, bit for bit, in
        # a third of the time (the demo's 310 tensors: 7 ms against 10-19 ms a step)
        self.optimizer = torch.optim.AdamW(self.params, lr=tc.lr, weight_decay=tc.weight_decay, fused=fused or None,
                                           foreach=None if fused else True)
        self.micro_batch = tc.batch_size * self.world.world_size  # clips per global micro-batch
        self.batches_per_epoch = math.ceil(len(self.data) / self.micro_batch)
        self.total_steps = planned_steps(tc, len(self.data), self.world.world_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, tc.warmup_steps, self.total_steps, tc.lr_schedule))
        self.diffusion = GaussianDiffusion.from_config(cfg.diffusion)
        self.generator = torch.Generator().manual_seed(tc.seed)  # the same stream on every rank
        self.step = self.epoch = self.batch_in_epoch = 0
        self._order: tuple[int, torch.Tensor | None] = (-1, None)  # (epoch, its permutation), computed once
        self.exp_dir = os.path.join(tc.checkpoint_dir, tc.exp_name)
        self.sample_dir = os.path.join(tc.sample_dir, tc.exp_name)
        # synthetic data: the renderer's truth scores every sample of a prompt it knows (12_Generated_Samples)
        self.truth = truth_source(cfg.data).get("source")
        self.run_dir = new_run_dir(os.path.join(tc.log_dir, tc.exp_name))
        self.resumed = resume is not None
        if resume is not None:
            self.load_state(resume)
        self.logger = None
        self.loss_history: list[float] = []  # the global batch's losses, one per optimizer step
        self.nonfinite_skips = 0
        self.stop_signal: int | None = None  # the signal that stopped training early (None: ran to the end)
        self.interrupted = self.stop_saved = False
        self.last_checkpoint: str | None = None  # newest file this run wrote: named when a run has to stop

    # ----- data order: a permutation per epoch from (seed, epoch); position saved in checkpoints -----
    def epoch_order(self, epoch: int) -> torch.Tensor:
        if self._order[0] != epoch:
            g = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.data), generator=g))
        return self._order[1]

    def next_batch(self):
        """This rank's rows of the next global micro-batch: (videos, text, rows, the global batch's size, whether the
        rows count toward the loss)."""
        n = self.micro_batch
        idx = self.epoch_order(self.epoch)[self.batch_in_epoch * n:(self.batch_in_epoch + 1) * n]
        self.batch_in_epoch += 1
        if self.batch_in_epoch == self.batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        n, rows = len(idx), range(*self.world.shard(len(idx)))
        # A rank left without rows of a short last batch trains on the last row with weight 0: it must still join
        # the gradient all-reduce.
        counted, rows = bool(rows), rows or range(n - 1, n)
        videos, caption_ids = self.data.get_batch(idx[rows.start:rows.stop], device=self.device)
        return videos, self.text.select(caption_ids), rows, n, counted

    def micro_step(self, videos, text, rows: range, n: int, counted: bool = True) -> dict:
        """Loss of this rank's rows of an n-clip global micro-batch. Timesteps and caption dropout are drawn for all
        n rows from the trainer's stream (the same on every rank) and noise from one seed per row, so a row trains
        the same whichever rank holds it. "loss" is this rank's share: summed over ranks it is the batch mean."""
        mine = slice(rows.start, rows.stop)
        seed = int(torch.randint(2 ** 62, (1,), generator=self.generator))
        t = self.diffusion.sample_timesteps(n, generator=self.generator)[mine].to(self.device)
        drop = (torch.rand(n, generator=self.generator) < self.cfg.model.caption_dropout)[mine].to(self.device)
        noise = row_noise(seed, rows, videos.shape[1:], self.device)
        with autocast(self.device, self.amp_dtype):
            out = self.diffusion.training_losses(self.net, videos, t, noise, text_tokens=text.tokens,
                                                 text_mask=text.mask, pooled=text.pooled, drop=drop)
        out["loss"] = out["loss_per_sample"].sum() * (1 / n if counted else 0.0)
        return {**out, "t": t}

    def train(self, stop_at: int | None = None) -> list[float]:
        """Run to total_steps; rank 0 checks the output folders and holds the experiment's lock, and every rank
        stops if that fails. A run already at total_steps only tidies the folder (the lock file and temp files a run
        killed after its last save left) and returns."""
        with contextlib.ExitStack() as held:
            error = None
            if self.world.is_main:
                try:
                    check_output_dirs(output_dirs(self.cfg, self.exp_dir, self.sample_dir))
                    held.enter_context(ExperimentLock(self.exp_dir))
                    if not self.resumed and self.step == 0:  # a trainer that has run continues its own checkpoints
                        refuse_to_overwrite(self.exp_dir)
                    remove_stale_temp_files(self.exp_dir)
                except UserError as err:
                    error = str(err)
            agree(error, self.world)
            return self.run(stop_at) if self.step < self.total_steps else self.loss_history

    def run(self, stop_at: int | None = None) -> list[float]:
        """The loop; SIGINT / SIGTERM (on any rank) or reaching stop_at saves latest.pt at the next step boundary."""
        tc = self.cfg.train
        self.logger = TBLogger(self.run_dir, tc, self.total_steps)
        self.logger.start(self.step, self.epoch, self.cfg.to_dict(), self.model, self.diffusion, self.device)
        bar = tqdm(total=self.total_steps, initial=self.step, desc=tc.exp_name, dynamic_ncols=True,
                   disable=self.quiet, file=sys.stderr)
        self.model.train()
        try:
            with StopRequest(repeat_aborts=not self.world.distributed) as stop:
                while self.step < self.total_steps and self.epoch < tc.epochs:
                    clock, loss = StepClock(), torch.zeros((), device=self.device)
                    for k in range(tc.grad_accum):
                        batch = self.next_batch()
                        clock.mark("data")
                        with self.gradient_sync(last=k == tc.grad_accum - 1):
                            out = self.micro_step(*batch)
                            # DDP averages the ranks' gradients: x world_size makes that the gradient of the sum
                            (out["loss"] * (self.world.world_size / tc.grad_accum)).backward()
                        loss += out["loss"].detach() / tc.grad_accum
                        self.logger.observe(out)
                        clock.mark("forward_backward")
                    norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
                    loss, grad_norm, signum = self.agree_step(loss, norm, stop.signum)  # the step's one host sync
                    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                        self.skip_nonfinite("loss" if not math.isfinite(loss) else "gradient norm")
                        continue
                    with self.logger.watch_update(self.step + 1):  # per-module grad/weight stats, when due
                        torch.nn.utils.clip_grads_with_norm_(self.params, tc.grad_clip or float("inf"), norm)
                        self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scheduler.step()
                    self.update_ema()
                    clock.mark("optimizer")
                    self.step += 1
                    self.loss_history.append(loss)
                    self.log_step(loss, grad_norm, clock.times, bar)
                    self.maybe_sample_and_checkpoint()
                    if self.step < self.total_steps and (signum or self.step == stop_at):
                        self.stop_saved = self.save("latest.pt")
                        self.interrupted, self.stop_signal = True, signum
                        break
        finally:
            bar.close()
            self.logger.close()
        return self.loss_history

    def gradient_sync(self, last: bool):
        """DDP all-reduces the gradients during backward: in a step's last micro-step only (no_sync before it)."""
        return self.ddp.no_sync() if self.world.distributed and not last else contextlib.nullcontext()

    def agree_step(self, loss: torch.Tensor, norm: torch.Tensor, signum: int | None) -> tuple[float, float, int]:
        """(global batch loss, gradient norm, stop signal or 0) as every rank sees them: the loss shares and a stop
        asked of any rank are summed in one small all-reduce. The gradients are already all-reduced, so the norm,
        and with it the skip decision, is the same on every rank."""
        stops = torch.tensor([float(signum == s) for s in STOP_SIGNALS], device=self.device)
        W = self.world.world_size
        both = all_reduce_sum(torch.cat([torch.stack([loss.float(), norm.float() / W]), stops]), self.world)
        loss, grad_norm, *asked = both.tolist()
        signum = next((int(s) for s, n in zip(STOP_SIGNALS, asked) if n > 0), 0)
        return loss, grad_norm, signum
    def skip_nonfinite(self, what: str) -> None:
        """Drop this step's gradients before they touch the weights or the EMA; a run of them means a real problem,
        so stop before wasting compute."""
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_skips += 1
        tqdm.write(f"warning: non-finite {what} at step {self.step}, step skipped ({self.nonfinite_skips} so far)",
                   file=sys.stderr)
        if self.nonfinite_skips >= MAX_NONFINITE_SKIPS:
            raise UserError(f"{MAX_NONFINITE_SKIPS} non-finite steps (last: {what} at step {self.step}): lower "
                            f"train.lr or check the data; {self.last_checkpoint_text()}")

    def last_checkpoint_text(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint was written by this run"
        return f"the last checkpoint written is {self.last_checkpoint}"

    @torch.no_grad()
    def update_ema(self) -> None:
        decay = self.cfg.train.ema_decay
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1.0 - decay)

    def log_step(self, loss: float, grad_norm: float, times: dict[str, float], bar) -> None:
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lrs[0]:.2e}", epoch=self.epoch, refresh=False)
        self.logger.step(self.step, {"loss": loss, "grad_norm": grad_norm, "lrs": lrs, "times": times,
                                     "epoch": self.epoch})  # the logger decides what is due

    def maybe_sample_and_checkpoint(self) -> None:
        """Save first: a failure while sampling (out of memory, a model bug) must not cost the steps since the last
        checkpoint, so it is a one-line warning and training goes on."""
        tc, last = self.cfg.train, self.step == self.total_steps
        if last and not self.save("final.pt", "latest.pt"):
            raise UserError(f"could not save final.pt at step {self.step} (see the warning above); "
                            f"{self.last_checkpoint_text()}")
        if not last and self.step % tc.checkpoint_every == 0:
            self.save(f"step_{self.step:07d}.pt", "latest.pt")
        if last or (tc.sample_every and self.step % tc.sample_every == 0):
            try:
                self.write_samples()
            except Exception as err:  # any sampling bug: report it, keep training
                msg = str(err).splitlines()[0][:200] if str(err) else ""
                tqdm.write(f"warning: sampling at step {self.step} failed ({type(err).__name__}: {msg}); training "
                           f"goes on", file=sys.stderr)

    def save(self, *names: str) -> bool:
        """Write the checkpoint under each name (rank 0, with every rank's random streams); True on every rank if it
        was written. Non-finite weights are never written (a UserError); a failed write (disk full, folder gone) is a
        one-line warning: the state stays in memory and the next interval retries."""
        rank_rngs = all_gather(rng_state(self.generator), self.world)
        ok = self.write_checkpoint(names, self.state_dict(rank_rngs)) if self.world.is_main else None
        return all_gather(ok, self.world)[0]

    def write_checkpoint(self, names: tuple[str, ...], state: dict) -> bool:
        bad = nonfinite_summary({"model": state["model"], "ema": state["ema"]})
        if bad:
            raise UserError(f"refusing to save non-finite weights at step {self.step} ({bad}); "
                            f"{self.last_checkpoint_text()}")
        for name in names:
            path = os.path.join(self.exp_dir, name)
            try:
                save_checkpoint(path, state)
            except OSError as err:
                tqdm.write(f"warning: could not save {path} at step {self.step} ({type(err).__name__}: "
                           f"{err.strerror or err}); training goes on and the next checkpoint retries", file=sys.stderr)
                return False
            self.last_checkpoint = path
        return True

    def write_samples(self) -> list[str]:
        """Sample the configured prompts with the EMA weights (rank 0); the training RNG streams are not touched."""
        if not self.world.is_main:
            return []
        latent = self.autoencoder is not None
        pipe = SignPipeline(self.cfg, self.ema, self.diffusion, device=self.device, autoencoder=self.autoencoder,
                            latent_norm=self.data.norm if latent else None)
        videos, ids = self.data.get_batch(torch.arange(1), device=self.device)  # fixed clip for 13_Noise_Vis
        self.logger.denoising(self.step, self.model, videos, self.text.select(ids), decode=pipe.decode if latent
                              else None)
        prompts = self.captions.prompts
        if not prompts:
            return []
        text = self.text.select(self.captions.prompt_rows().to(self.device))
        clips = pipe(prompts, seed=self.cfg.train.seed, text=text)
        paths = pipe.save(clips, prompts, self.sample_dir, suffix=f"_step{self.step:07d}")
        self.logger.samples(self.step, clips, prompts)
        known = [i for i, p in enumerate(prompts) if scorable(p)] if self.truth else []
        if known and self.logger.enabled:
            with self.logger.timed():
                scores = ground_truth.score_clips(clips[known], [prompts[i] for i in known], self.truth,
                                                  real_reference=False)["overall"]
            self.logger.scalars(self.step, "12_Generated_Samples/ground_truth", scores)
        if not self.quiet:
            tqdm.write(f"step {self.step}: samples -> {', '.join(paths)}", file=sys.stderr)
        return paths

    # ----- checkpoint state: primitives and state_dicts only -----
    def state_dict(self, rank_rngs: list[dict] | None = None) -> dict:
        """rng is rank 0's random streams, rank_rngs the other ranks'; batch_in_epoch counts global micro-batches of
        micro_batch clips."""
        rngs = rank_rngs or [rng_state(self.generator)]
        return {
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "micro_batch": self.micro_batch, "world_size": self.world.world_size,
            "rng": rngs[0], "rank_rngs": rngs[1:], "config": self.cfg.to_dict(), "text_dim": self.text_dim,
            "run_dir": self.run_dir, "caption_words": self.vocabulary(),
            "num_clips": len(self.data), "num_captions": len(self.captions.vocab),
            "sample_prompts": list(self.captions.prompts),  # `export` samples them for the model card
            **({} if self.autoencoder is None else {"latent": self.data.state()}),  # how sampling decodes it
        }

    def vocabulary(self) -> list[str]:
        """Every word of the training captions: `sample` and `evaluate` warn about caption words outside it."""
        return sorted({w for c in self.captions.vocab for w in caption_words(c)})

    def load_state(self, state: dict) -> None:
        if state["text_dim"] != self.text_dim:
            raise UserError(f"checkpoint was trained with a {state['text_dim']}-dim text encoder, "
                            f"text.encoder={self.cfg.text.encoder} gives {self.text_dim}")
        if self.autoencoder is not None:
            self.data.resume(state.get("latent"))
        load_weights(self.model, state["model"], "checkpoint")
        load_weights(self.ema, state["ema"], "checkpoint")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as err:
            raise UserError(f"checkpoint's optimizer state does not fit the model: {str(err).splitlines()[0]}") \
                from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch = self.resume_position(state)
        rngs = [state["rng"], *state.get("rank_rngs", [])]  # a different process count: rank 0's streams for all
        set_rng_state(rngs[self.world.rank] if len(rngs) == self.world.world_size else rngs[0], self.generator)
        self.run_dir = state["run_dir"]

    def resume_position(self, state: dict) -> int:
        """The saved place in the epoch's order, in global micro-batches of this run's size. The same micro-batch
        (batch_size x processes) continues exactly; another must split the clips already seen into whole batches."""
        saved_batch = state.get("micro_batch", state["config"]["train"]["batch_size"])
        seen = state["batch_in_epoch"] * saved_batch
        if seen % self.micro_batch:
            raise UserError(f"the checkpoint stopped {seen} clips into epoch {state['epoch']} (micro-batches of "
                            f"{saved_batch} clips), which is not a whole number of this run's micro-batches of "
                            f"{self.micro_batch} (train.batch_size {self.cfg.train.batch_size} x "
                            f"{self.world.world_size} processes): resume with a batch_size x processes that divides "
                            f"{seen}, e.g. the checkpoint's {saved_batch}")
        return seen // self.micro_batch

