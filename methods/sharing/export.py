"""`export`: a training checkpoint -> a folder to share (safetensors weights, config.json, a model card with sample
GIFs). Everything the checkpoint holds only for training (optimizer, RNG streams, run paths) stays behind."""
from __future__ import annotations

import os
import shutil

import torch

from methods.checkpoint import check_weights_fit, load_checkpoint, nonfinite_summary
from methods.run_config import config_from_checkpoint
from methods.sharing.export_format import (AUTOENCODER_DIR, CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, is_export,
                                           write_export)
from methods.sampling import SamplingSettings
from models.registry import build_video_model
from utils.atomic import atomic_write
from utils.errors import UserError
from utils.folders import claim_output_folder
from utils.safe_json import read_json

SAMPLES_DIR = "samples"
FOLDER = "path/to/this/folder"  # how the card names the export in its commands
MAX_REPORT_BYTES = 64 << 20  # an `evaluate` report is a few hundred kB
SAMPLE_SEED = 0  # the card's GIFs are sample 0 of (seed 0, caption): `sample --seed 0` redraws them


def export(checkpoint: str, out_dir: str, evaluation: str | None = None, captions: list[str] | None = None,
           samples: bool = True, device: str = "auto", command: str = "python main.py export") -> dict:
    """Write the export folder; returns what was written. Only a new or empty folder, or one an earlier export made,
    is written into (utils.folders.claim_output_folder), so an export never mixes with or replaces other files."""
    from utils.device import select_device

    state = load_checkpoint(checkpoint)
    bad = nonfinite_summary(state["ema"])
    if bad:
        raise UserError(f"{checkpoint} holds non-finite EMA weights ({bad}): export an earlier checkpoint")
    cfg = config_from_checkpoint(state)
    with torch.device("meta"):  # shapes only: nothing allocated
        check_weights_fit(build_video_model(cfg, state["text_dim"]), state["ema"], checkpoint)
    report = read_evaluation(evaluation) if evaluation else None
    claim_output_folder(out_dir, "export", command, legacy=is_export)
    carried = carry_autoencoder(cfg, out_dir)
    settings = SamplingSettings.resolve(cfg.diffusion)
    n_params = sum(v.numel() for v in state["ema"].values())
    meta = {
        "config": portable(cfg, carried).to_dict(), "text_dim": state["text_dim"], "step": state["step"],
        "caption_words": list(state.get("caption_words") or []),
        "architecture": cfg.model.arch, "parameters": n_params, "text_encoder": cfg.text.encoder,
        "num_frames": cfg.data.num_frames, "image_size": cfg.data.image_size,
        "sampling": {"steps": settings.steps, "guidance": settings.guidance, "sampler": settings.sampler,
                     "eta": settings.eta, "noise_correlation": settings.noise_correlation},
        "training": {"clips": state.get("num_clips"), "captions": state.get("num_captions"),
                     "steps": state["step"], "data_folder": os.path.basename(os.path.normpath(cfg.data.data_dir))},
    }
    if "latent" in state:  # a latent model: how its clips are decoded (see data/latents.py)
        meta["latent"] = state["latent"]
        meta["autoencoder"] = {"kind": cfg.autoencoder.kind, "path": carried or cfg.autoencoder.path}
    write_export(out_dir, state["ema"], meta)
    captions = captions or list(state.get("sample_prompts") or cfg.train.sample_prompts)
    gifs = write_samples(out_dir, captions, select_device(device)) if samples and captions else []
    with atomic_write(os.path.join(out_dir, CARD_FILE), "w") as f:
        f.write(model_card(meta, report, gifs))
    return {"out_dir": out_dir, "files": [WEIGHTS_FILE, CONFIG_FILE, CARD_FILE, *([carried] if carried else []), *gifs]}


def carry_autoencoder(cfg, out_dir: str) -> str | None:
    """A latent model of the project's own autoencoder takes a copy of its folder (weights + config.json, no pickle)
    along as <out_dir>/autoencoder, so the export samples anywhere; its relative name, or None (pixel models, and
    kl / tiny ones, which name their diffusers autoencoder by hub name or path)."""
    if cfg.autoencoder.kind != "own":
        return None
    from models.autoencoder import CONFIG_FILE as AE_CONFIG, WEIGHTS_FILE as AE_WEIGHTS

    folder = os.path.join(out_dir, AUTOENCODER_DIR)
    os.makedirs(folder, exist_ok=True)
    for name in (AE_WEIGHTS, AE_CONFIG):
        try:
            with open(os.path.join(cfg.autoencoder.path, name), "rb") as src, \
                    atomic_write(os.path.join(folder, name)) as dst:
                shutil.copyfileobj(src, dst)
        except OSError as err:
            raise UserError(f"cannot copy the autoencoder {cfg.autoencoder.path}/{name} into the export "
                            f"({type(err).__name__}: {err.strerror or err})") from None
    return AUTOENCODER_DIR


def portable(cfg, autoencoder_dir: str | None = None):
    """The config with the trainer's output and cache places back at their defaults: a user of the export writes
    samples under their own working folder, not the trainer machine's paths; an own autoencoder is named by its copy
    inside the export (relative: read_export resolves it against the folder)."""
    from config import Config, DataConfig, TrainConfig

    out = Config.from_dict(cfg.to_dict())
    if autoencoder_dir:
        out.autoencoder.path = autoencoder_dir
    for field in ("checkpoint_dir", "log_dir", "sample_dir"):
        setattr(out.train, field, getattr(TrainConfig(), field))
    out.data.cache_dir = DataConfig().cache_dir
    return out


def card_autoencoder(meta: dict) -> list[str]:
    """The model card's line on a latent model's autoencoder (none for a pixel model)."""
    ae = meta.get("autoencoder")
    if not ae:
        return []
    where = (f"included in `{ae['path']}/`" if ae["kind"] == "own"
             else f"`{ae['path']}` (diffusers, not included: loaded by that name or path)")
    return ["", f"A latent diffusion model: it draws frames as latents of a frozen {ae['kind']} frame autoencoder, "
                f"{where}, decoded to pixels after sampling (normalisation in `{CONFIG_FILE}`: `latent`)."]


def read_evaluation(path: str) -> dict:
    try:
        report = read_json(path, MAX_REPORT_BYTES)
        report["groups"].items()
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"--evaluation {path}: not an `evaluate` report ({type(err).__name__})") from None
    return report


def write_samples(out_dir: str, captions: list[str], device) -> list[str]:
    """One GIF per caption, sampled from the exported folder itself (what a user of the export gets)."""
    from methods.pipeline import SignPipeline

    pipe = SignPipeline.from_pretrained(out_dir, device)
    clips = pipe(captions, seed=SAMPLE_SEED)
    folder = os.path.join(out_dir, SAMPLES_DIR)
    shutil.rmtree(folder, ignore_errors=True)  # an earlier export's samples
    return [os.path.relpath(p, out_dir) for p in pipe.save(clips, captions, folder)]


def model_card(meta: dict, report: dict | None, gifs: list[str]) -> str:
    """The folder's README.md: what the model is, what it was trained on, how well it follows text, how to use it."""
    t, s = meta["training"], meta["sampling"]
    lines = [
        "---", "library_name: text2sign", "pipeline_tag: text-to-video",
        "tags: [sign-language, text-to-video, video-diffusion]", "---", "",
        f"# Text2Sign {meta['architecture']}", "",
        f"A text-conditioned video diffusion model that draws sign-language clips of {meta['num_frames']} frames at "
        f"{meta['image_size']}x{meta['image_size']} pixels from a caption. {meta['parameters'] / 1e6:.2f}M "
        f"parameters ({meta['architecture']}), conditioned by the frozen `{meta['text_encoder']}` text encoder "
        f"(not included: it is loaded by name). Weights: `{WEIGHTS_FILE}` (EMA, fp32); everything needed to rebuild "
        f"the model and its sampler: `{CONFIG_FILE}`.", *card_autoencoder(meta), "",
        "## Training", "",
        f"- {t['steps']} optimizer steps on the data folder `{t['data_folder']}`"
        + (f": {t['clips']} training clips with {t['captions']} distinct captions" if t["clips"] else "")
        + f", a vocabulary of {len(meta['caption_words'])} caption words.",
        f"- Sampling defaults: {s['sampler']} with {s['steps']} steps, classifier-free guidance {s['guidance']:g}, "
        f"starting noise {s['noise_correlation']:.3g} shared by a clip's frames.",
        "", "## Evaluation", "",
    ]
    if report:
        lines += [f"`python main.py evaluate` ({report.get('steps')} steps, guidance {report.get('guidance')}, "
                  f"{report.get('samples_per_caption')} samples per caption, seed {report.get('seed')}):", "",
                  "| captions | R@1 generated | R@1 real | chance | Frechet | SSIM | frame change (real) |",
                  "|---|---|---|---|---|---|---|"]
        for name, g in report["groups"].items():
            lines.append(f"| {name} ({g['num_captions']}) | {g['generated_r1']:.3f} | {g['real_r1']:.3f} | "
                         f"{g['chance_r1']:.3f} | {g['frechet_distance']:.3f} | {g['ssim']:.3f} | "
                         f"{g['temporal_change_generated']:.1f} ({g['temporal_change_real']:.1f}) |")
    else:
        lines.append("Not evaluated at export (`python main.py export --evaluation REPORT.json` adds the numbers).")
    lines += ["", "## Samples", ""]
    lines += [f"![{os.path.splitext(os.path.basename(g))[0]}]({g})" for g in gifs] or ["(none exported)"]
    lines += [
        "", "## Use", "", "```bash",
        f"python main.py sample --model {FOLDER} --text \"hello\"     # GIFs in generated_samples/",
        f"python main.py serve --model {FOLDER}                       # a page at http://127.0.0.1:7860",
        "```", "",
        "## Intended use and limits", "",
        "For research and teaching on text-to-sign generation. It only knows the words of its training captions "
        "(`caption_words` in config.json; `sample` warns about others) and the signers, views and resolution of its "
        "training clips. A generated clip is not a correct sign: do not use it to communicate with or teach Deaf "
        "people without review by fluent signers.", "",
    ]
    return "\n".join(lines)
