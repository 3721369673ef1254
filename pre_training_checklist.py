"""The longer pre-flight before a training run: every check prints one line, exit 1 if any fails.

    python pre_training_checklist.py [--preset P] [--set field=value ...] [--max-clips N]

Checks, in order (each is a function below that takes what it inspects, so tests plant faults directly):

- config: the preset and --set values build a valid configuration.
- data folder: data.data_dir exists and holds clips, GIFs or videos (WARN instead when the demo preset writes its
  synthetic set there).
- captions present: clips with a usable <name>.txt caption; clips without one are listed (WARN: training skips them).
- clips decodable: every clip (or the first --max-clips) decodes; any that does not is named (FAIL: a damaged file
  that training would silently skip).
- text encoder: text.encoder loads and encodes a caption (offline-aware message when it cannot).
- autoencoder: pixel space, or the configured autoencoder loads (own: the folder `train-autoencoder` writes; kl /
  tiny: offline-aware), gives the latent grid the model is built for, and round-trips a frame; an own one trained on
  another folder or frame size is a WARN.
- model: the configured architecture builds; parameter counts.
- pretrained: model.pretrained is present and loads with a clean report (no shape mismatch, no uncovered key).
- backbone trainable: every model parameter requires grad (a frozen backbone behind a zero-initialised final layer
  predicts all zeros: the earlier toolkit's "black output").
- output directories: checkpoint, sample and cache folders can be created and written.
- disk space: room for checkpoints, sized from the parameter count (weights + EMA + two AdamW moments, fp32).
- TensorBoard: the log folder takes a real event file.
- device and memory: the configured device exists; training memory estimate vs what is available.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

import torch

from methods.training.preflight import FAIL, PASS, WARN, Checks, check_config, format_count, parse_args

BYTES_PER_PARAM_CHECKPOINT = 16  # fp32 weights + EMA + AdamW exp_avg + exp_avg_sq


def check_data_folder(dc):
    from data.folder import DataError, find_pairs
    from data.synth import will_write_synthetic

    try:
        pairs, skipped = find_pairs(dc.data_dir)
    except DataError:
        if will_write_synthetic(dc):
            return WARN, (f"no clips in {dc.data_dir} yet: `main.py train` writes the synthetic set "
                          f"({dc.synth_num} clips)")
        raise
    return PASS, f"{len(pairs) + len(skipped)} clip files in {dc.data_dir}", (pairs, skipped)


def check_captions(pairs: list[tuple[str, str]], skipped: list[tuple[str, str]]):
    if not pairs:
        return FAIL, f"no clip has a usable caption ({len(skipped)} skipped: {_names(skipped)})"
    words = [len(c.split()) for _, c in pairs]
    detail = (f"{len(pairs)} clips captioned ({len(set(c for _, c in pairs))} distinct captions, "
              f"{min(words)}..{max(words)} words)")
    if skipped:
        return WARN, f"{detail}; {len(skipped)} file(s) skipped by training: {_names(skipped)}"
    return PASS, detail


def _names(items: list[tuple[str, str]], limit: int = 5) -> str:
    shown = ", ".join(f"{name} ({why})" for name, why in items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def check_clips(pairs: list[tuple[str, str]], num_frames: int, max_clips: int = 0):
    """Decode the frames training will take from every clip (the loader's own readers); name the ones that fail."""
    from dataset import sample_frame_indices
    from utils.gif import read_gif
    from utils.video import is_video, read_video

    chosen = pairs[:max_clips] if max_clips else pairs
    bad, frames, sizes = [], [], set()
    for path, _ in chosen:
        try:
            read = read_video if is_video(path) else read_gif
            clip, durations = read(path, lambda d: sample_frame_indices(d, num_frames))
        except ValueError as err:
            bad.append((os.path.basename(path), str(err)))
            continue
        frames.append(len(durations))
        sizes.add(f"{clip.shape[2]}x{clip.shape[1]}")
    if bad:
        return FAIL, f"{len(bad)} of {len(chosen)} clip(s) do not decode: {_names(bad)}"
    short = sum(n < num_frames for n in frames)
    return PASS, (f"{len(chosen)}{'' if len(chosen) == len(pairs) else f' of {len(pairs)}'} clips decode, "
                  f"{min(frames)}..{max(frames)} frames, sizes {', '.join(sorted(sizes)[:4])}"
                  f"{', ...' if len(sizes) > 4 else ''}"
                  + (f"; {short} shorter than data.num_frames={num_frames} (last frame repeated)" if short else ""))


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_text_encoder(name: str, max_length: int):
    """Offline-aware: a hub model that is neither cached nor downloadable fails at once, without minutes of retries."""
    from huggingface_hub import try_to_load_from_cache

    from models.text_encoder import FrozenTextEncoder, resolve_encoder

    path = resolve_encoder(name)
    if not os.path.isdir(path) and not isinstance(try_to_load_from_cache(path, "config.json"), str):
        if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
            return FAIL, (f"{name}: not in the local Hugging Face cache and the hub cannot be reached (offline): "
                          f"download it once with internet, or set text.encoder to a local folder with config.json, "
                          f"weights and tokenizer files (or to all-MiniLM-L6-v2, shipped with requirements.txt)")
    encoder = FrozenTextEncoder(name, max_length)
    emb = encoder.encode(["hello"])
    offline = " (HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
    return PASS, f"{name}: {encoder.dim}-dim embeddings, {emb.tokens.shape[1]} tokens for 'hello'{offline}", encoder.dim


def check_autoencoder(cfg):
    ac, dc = cfg.autoencoder, cfg.data
    if ac.kind == "none":
        return PASS, "none: the model diffuses pixels"
    from models.autoencoder import load_autoencoder
    from models.registry import check_autoencoder as check_fits

    model = load_autoencoder(ac)
    check_fits(cfg, model)
    channels = 3 * model.time_down  # a frame, or a frame pair stacked on the channels
    frame = torch.linspace(-1, 1, channels * dc.image_size ** 2).reshape(1, channels, dc.image_size, dc.image_size)
    with torch.no_grad():
        z = model.encode(frame)
        back = model.decode(z)
    if back.shape != frame.shape or not torch.isfinite(back).all():
        return FAIL, f"{ac.path}: a {dc.image_size}px frame decodes to {tuple(back.shape)} (non-finite or resized)"
    what = "frames" if model.time_down == 1 else f"frame groups of {model.time_down}"
    detail = f"{ac.kind} {ac.path}: {dc.image_size}px {what} -> {tuple(z.shape[1:])} latents, round trip fine"
    meta = getattr(model, "meta", {})  # an own autoencoder's config.json; diffusers ones have none
    trained_on = meta.get("data_dir")
    if trained_on and os.path.abspath(trained_on) != os.path.abspath(dc.data_dir):
        return WARN, detail + f"; trained on {trained_on}, not on data.data_dir (fine if the footage is alike)"
    if meta.get("image_size") not in (None, dc.image_size):
        return WARN, detail + f"; trained on {meta['image_size']}px frames, not {dc.image_size}px"
    return PASS, detail


def check_model(cfg, text_dim: int):
    from models import build_video_model
    from models.registry import parameter_groups

    torch.manual_seed(cfg.train.seed)
    model = build_video_model(cfg, text_dim)
    groups = parameter_groups(model)
    total = sum(groups.values())
    return PASS, (f"{cfg.model.arch} ({type(model).__name__}): {total:,} parameters ("
                  + ", ".join(f"{k} {format_count(v)}" for k, v in groups.items()) + ")"), model


def check_pretrained(model, source: str, vit_init: str):
    if vit_init:
        from models.vit_init import load_vit

        return PASS, load_vit(model, vit_init)
    if not source:
        return PASS, "none configured: random init (the tinyfusion preset starts from TinyDiT-D14/2)"
    from models.pretrained import load_pretrained

    report = load_pretrained(model, source)
    if report.container.startswith("model"):
        return WARN, f"{report.path}: no 'ema' weights in the file, loaded 'model': {report.summary()}"
    return PASS, f"{report.path} [{report.container.split(';')[0]}]: {report.summary()}"


def check_backbone_trainable(model):
    params = list(model.named_parameters())
    frozen = [name for name, p in params if not p.requires_grad]
    total = sum(p.numel() for _, p in params)
    trainable = sum(p.numel() for _, p in params if p.requires_grad)
    detail = f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / max(total, 1):.1f}%)"
    if frozen:
        from models.pretrained import abbreviate

        return FAIL, (f"{detail}; frozen: {', '.join(abbreviate(frozen)[:4])}{' ...' if len(frozen) > 4 else ''} "
                      f"(the trainer optimises only requires_grad parameters)")
    return PASS, detail


def check_output_dirs(places: dict[str, str]):
    """places: config field -> folder, as the trainer will write them (methods.training.experiment.output_dirs)."""
    from utils.folders import unwritable_reason

    problems = [f"{field}: {folder} ({why})" for field, folder in places.items() if (why := unwritable_reason(folder))]
    if problems:
        return FAIL, "not writable: " + "; ".join(problems)
    return PASS, "writable: " + ", ".join(places.values())


def check_disk(folder: str, n_params: int, steps: int, checkpoint_every: int):
    size = n_params * BYTES_PER_PARAM_CHECKPOINT
    kept = steps // checkpoint_every + 2  # step_N.pt files, latest.pt, final.pt
    free = shutil.disk_usage(_existing_parent(folder)).free
    detail = (f"checkpoint ~{size / 1e9:.2f} GB ({format_count(n_params)} params x {BYTES_PER_PARAM_CHECKPOINT} B); "
              f"{kept} kept over {steps:,} steps need ~{kept * size / 1e9:,.1f} GB; {free / 1e9:,.1f} GB free")
    if free < 2 * size:  # a save writes a temp file next to the previous latest.pt
        return FAIL, detail + " (not even one checkpoint fits)"
    if free < kept * size:
        return WARN, detail + " (raise train.checkpoint_every or prune step_*.pt files as training goes)"
    return PASS, detail


def _existing_parent(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_tensorboard(log_root: str):
    from torch.utils.tensorboard import SummaryWriter

    os.makedirs(log_root, exist_ok=True)
    folder = tempfile.mkdtemp(prefix=".preflight_", dir=log_root)
    try:
        writer = SummaryWriter(folder)
        writer.add_scalar("preflight", 1.0, 0)
        writer.close()
        events = [n for n in os.listdir(folder) if n.startswith("events.out.tfevents")]
        if not events:
            return FAIL, f"SummaryWriter wrote no event file in {log_root}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return PASS, f"event file written and removed in {log_root}"


def check_device_memory(cfg, model):
    from methods.training.experiment import estimate_memory
    from utils.device import autocast_dtype, available_memory, select_device

    device = select_device(cfg.train.device)
    precision = "bf16 autocast" if autocast_dtype(device, cfg.train.precision) else "fp32"
    need, free = estimate_memory(cfg, model), available_memory(device)
    if free is None:
        return WARN, f"{device}: training needs ~{need / 1e9:.1f} GB (estimate); free memory unknown on this system"
    detail = (f"{device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), {precision}; "
              f"training needs ~{need / 1e9:.1f} GB (estimate), {free / 1e9:.1f} GB available")
    if need > free:
        hint = "" if cfg.model.grad_checkpointing else "; try --set model.grad_checkpointing=true"
        return WARN, detail + hint
    return PASS, detail


def run_checklist(cfg, checks: Checks, max_clips: int = 0) -> None:
    dc, tc = cfg.data, cfg.train
    data = checks.run("data folder", check_data_folder, dc)
    n_train = dc.synth_num
    if data is not None:
        from data.folder import select_split

        pairs, skipped = data
        checks.run("captions present", check_captions, pairs, skipped)
        if pairs:
            checks.run("clips decodable", check_clips, pairs, dc.num_frames, max_clips)
        n_train = len(select_split(pairs, "train", dc.val_fraction))
    text_dim = checks.run("text encoder", check_text_encoder, cfg.text.encoder, cfg.text.max_length)
    checks.run("autoencoder", check_autoencoder, cfg)
    model = checks.run("model", check_model, cfg, text_dim or 768)
    if model is not None:
        checks.run("pretrained", check_pretrained, model, cfg.model.pretrained, cfg.model.vit_init)
        checks.run("backbone trainable", check_backbone_trainable, model)
    from methods.training.experiment import output_dirs

    places = output_dirs(cfg, os.path.join(tc.checkpoint_dir, tc.exp_name), os.path.join(tc.sample_dir, tc.exp_name))
    checks.run("output directories", check_output_dirs, places)
    if model is not None:
        from methods.training.trainer import planned_steps

        n_params = sum(p.numel() for p in model.parameters())
        checks.run("disk space", check_disk, tc.checkpoint_dir, n_params, planned_steps(tc, max(n_train, 1)),
                   tc.checkpoint_every)
    if tc.tensorboard:
        checks.run("TensorBoard", check_tensorboard, os.path.join(tc.log_dir, tc.exp_name))
    else:
        checks.record(PASS, "TensorBoard", "off (train.tensorboard=false): nothing is written")
    if model is not None:
        checks.run("device and memory", check_device_memory, cfg, model)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv, lambda p: p.add_argument(
        "--max-clips", type=int, default=0, help="decode only the first N clips (default 0: all)"))
    checks = Checks()
    cfg = checks.run("config", check_config, args.preset, args.overrides)
    if cfg is not None:
        run_checklist(cfg, checks, args.max_clips)
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
