"""Load a TinyFusion / DiT image checkpoint (TinyDiT-D14/2) into a VideoDiT, exactly and auditably.

Every tensor in the file is handled by exactly one rule of `RULES`, and every tensor of the model either receives
a value from the file or is one of the modules Text2Sign adds (`NEW`); anything else is a UserError naming the
tensors, raised before the model is touched (no silent strict=False):

- exact: same name, same shape, copied bit for bit (timestep MLP, every block's attention / MLP / adaLN, the final
  layer's adaLN, the patch-embedding bias). A shape difference is an error naming both shapes. An "adapt" tensor
  whose shape already fits (latent mode, below) is copied bit for bit too and reported as exact.
- adapt rgb_from_latent, pixel mode (x_embedder.proj.weight, (D, 4, p, p) -> (D, 3, p, p)): the SD-VAE latent
  channels are not colours, so no latent filter belongs to any one RGB channel. Every RGB channel gets the sum of
  the 4 latent filters divided by 3 (= their mean x 4/3): the model then sees an RGB pixel as its grey level copied
  into all 4 latent channels, and a grey input g gives exactly the response the pretrained model gives to a latent
  whose 4 channels are all g.
- adapt eps_mean, pixel mode (final_layer.linear.weight / .bias, p*p*8 -> p*p*3 rows): DiT learns sigma, so its 8
  output channels per pixel are 4 epsilon channels then 4 variance channels (unused: our variances are fixed). Each
  of our 3 outputs gets the mean of the 4 epsilon rows of the same patch position. This is the adjoint of the input
  rule: the noise component the model can see is the grey (channel-mean) part, and the best per-channel estimate
  of that part is the mean of the latent predictions. Rows are ordered (p, q, channel), channel fastest, exactly
  as `VideoDiT.unpatchify` reads them.
- recompute pos_embed: DiT's position table is fixed 2D sin-cos, not learned. The file's table (16x16 grid at
  256 px) is checked against our formula and then recomputed for the model's own grid (32x32 for 64 px frames with
  patch 2, the identical 16x16 in latent mode at 256 px, any size), never padded or interpolated. A table that is
  not the sin-cos formula is an error.
- unused y_embedder.embedding_table.weight: the 1001-entry ImageNet class table; captions condition the model
  through `text_embedder` instead, so the class path does not exist here.

Latent mode (the `tinyfusion-256` preset: 256x256 frames through the SD VAE, 8x down, 4 channels, so 32x32 latents
and a 16x16 patch grid): whenever model.pretrained is set and the model sees FILE_LATENT_CHANNELS channels,
`models.registry.build_video_model` gives VideoDiT DiT's learned-sigma final layer (8 channels per latent pixel).
Every tensor then fits: the patch embedding and the final layer load exactly, 0 adapted. The 4 variance channels
are kept so the file loads as trained but are unused: forward returns only the first 4 (epsilon or v), so the
diffusion code is unchanged and those rows get no gradient. In pixel mode (3 RGB channels) there is no learned
sigma: the two adapt rules above apply and the variance rows are dropped.

Input scale (pixel mode): the pretrained model saw SD latents scaled by 0.18215 (about unit variance, one latent
pixel = 8x8 image pixels); we feed pixels in [-1, 1] (std about 0.5) patch by patch. The noisy input x_t is
dominated by unit noise over most timesteps, so pixels are not rescaled; fine-tuning absorbs the remaining
difference. The adapted weights are a principled starting point, not an equivalent model.

Timesteps: the network always sees t on the pretrained 0..999 scale: step k of T maps to round((k+1)*1000/T) - 1
(`schedulers.subsample_indices`). DiT was trained with the linear schedule (betas 1e-4..0.02), so
diffusion.schedule=linear also gives each t the noise level the pretrained model associates with it.

Sources: a file, a directory holding one `*.pt` (a `*TinyDiT*.pt` is preferred), an http(s) URL (downloaded once
into the torch hub cache) or hf://owner/repo/path/file.pt (Hugging Face hub cache). Files are read with
torch.load(weights_only=True); TinyFusion's training checkpoints also pickle their argparse.Namespace "args",
which is allowed as a safe global and nothing else is.
"""
from __future__ import annotations

import argparse
import glob
import os
import pickle
import re
from dataclasses import dataclass, field

import torch

from models.blocks import sincos_2d
from utils.errors import UserError

RELEASE_FILE = "TinyDiT-D14-MaskedKD-500K.pt"
FILE_LATENT_CHANNELS = 4  # the SD-VAE latents TinyDiT was trained on: a model seeing these keeps DiT's learned sigma
RELEASE_URL = f"https://github.com/VainF/TinyFusion/releases/download/v1.0.0/{RELEASE_FILE}"
HOW_TO_GET = (f"download {RELEASE_FILE} from {RELEASE_URL} (TinyFusion v1.0.0 release) and put it in pretrained/ "
              f"(see pretrained/README.md), or set model.pretrained='' for a random start")

_BLOCK = r"blocks\.\d+\."
# (pattern on the file's key, action, rule or reason); every file key must match exactly one pattern
RULES: list[tuple[str, str, str]] = [
    (r"pos_embed", "recompute", "sincos_2d"),
    (r"x_embedder\.proj\.weight", "adapt", "rgb_from_latent"),
    (r"x_embedder\.proj\.bias", "exact", ""),
    (r"t_embedder\.mlp\.[02]\.(weight|bias)", "exact", ""),
    (r"y_embedder\.embedding_table\.weight", "unused", "ImageNet class table; captions condition via text_embedder"),
    (_BLOCK + r"(attn\.(qkv|proj)|mlp\.fc[12]|adaLN_modulation\.1)\.(weight|bias)", "exact", ""),
    (r"final_layer\.linear\.(weight|bias)", "adapt", "eps_mean"),
    (r"final_layer\.adaLN_modulation\.1\.(weight|bias)", "exact", ""),
]
# model tensors that Text2Sign adds to the image DiT: the only ones allowed to keep their initialisation
NEW = r"text_embedder\..+|" + _BLOCK + r"(temporal_attn|cross_attn)\..+"


def adapt_patch_embed(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """rgb_from_latent: (D, C_lat, p, p) -> (D, in_channels, p, p); each = sum of latent filters / in_channels."""
    return (weight.sum(dim=1, keepdim=True) / in_channels).expand(-1, in_channels, -1, -1).contiguous()


def adapt_final_linear(tensor: torch.Tensor, patch: int, latent_channels: int, out_channels: int) -> torch.Tensor:
    """eps_mean: rows (p*p*C_file) -> (p*p*out_channels); each output = mean of the latent epsilon rows."""
    rows = tensor.reshape(patch * patch, -1, *tensor.shape[1:])  # (p*p, C_file, ...) channel fastest
    eps = rows[:, :latent_channels].mean(dim=1, keepdim=True)  # (p*p, 1, ...)
    return eps.expand(-1, out_channels, *tensor.shape[1:]).reshape(-1, *tensor.shape[1:]).contiguous()


# ----------------------------------------------------------------------------------------------------------
# Report


def _fmt_indices(idx: list[int]) -> str:
    runs, start = [], idx[0]
    for a, b in zip(idx, idx[1:] + [None]):
        if b != a + 1:
            runs.append(str(start) if a == start else f"{start}..{a}")
            start = b
    return runs[0] if len(idx) == 1 else "{" + ",".join(runs) + "}"


def abbreviate(names: list[str]) -> list[str]:
    """Group names that differ only in the block index, then in the last component:
    blocks.0.attn.qkv.weight ... blocks.13.attn.qkv.bias -> "blocks.{0..13}.attn.qkv.{weight,bias}"."""
    templates: dict[str, list[int]] = {}
    for name in names:
        m = re.match(r"blocks\.(\d+)\.(.+)", name)
        key, idx = (f"blocks.#.{m.group(2)}", int(m.group(1))) if m else (name, None)
        templates.setdefault(key, [])
        if idx is not None:
            templates[key].append(idx)
    merged: dict[tuple[str, str], list[str]] = {}
    for key, idx in templates.items():
        prefix, _, last = key.rpartition(".")
        indices = _fmt_indices(sorted(idx)) if idx else ""
        merged.setdefault((prefix, indices), []).append(last)
    out = []
    for (prefix, indices), lasts in merged.items():
        tail = lasts[0] if len(lasts) == 1 else "{" + ",".join(lasts) + "}"
        out.append((prefix.replace("#", indices) + "." if prefix else "") + tail)
    return out


def _shape(shape) -> str:
    return str(tuple(shape))


@dataclass
class LoadReport:
    """What happened to every tensor: names per category, value counts, and one line per non-exact rule."""
    path: str
    container: str  # "ema", "model" or "bare state dict"
    file_tensors: int = 0
    exact: list[str] = field(default_factory=list)
    adapted: list[tuple[str, str]] = field(default_factory=list)  # (name, "file shape -> model shape: rule")
    recomputed: list[tuple[str, str]] = field(default_factory=list)
    unused: list[tuple[str, str]] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    values: dict[str, int] = field(default_factory=dict)  # elements per category
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {"exact": len(self.exact), "adapted": len(self.adapted), "recomputed": len(self.recomputed),
                "unused": len(self.unused), "new": len(self.new)}

    def summary(self) -> str:
        return ", ".join(f"{n} {k}" for k, n in self.counts.items())

    def __str__(self) -> str:
        v = self.values
        lines = [f"pretrained weights: {self.path} [{self.container}], {self.file_tensors} tensors in the file",
                 *(f"  note: {n}" for n in self.notes),
                 f"  loaded exactly      {len(self.exact):4d} tensors {v.get('exact', 0):>13,} values:"]
        lines += [f"      {g}" for g in abbreviate(self.exact)]
        lines.append(f"  adapted             {len(self.adapted):4d} tensors {v.get('adapted', 0):>13,} values:")
        lines += [f"      {n} {d}" for n, d in self.adapted]
        lines.append(f"  recomputed          {len(self.recomputed):4d} tensors:")
        lines += [f"      {n} {d}" for n, d in self.recomputed]
        lines.append(f"  unused in the file  {len(self.unused):4d} tensors {v.get('unused', 0):>13,} values:")
        lines += [f"      {n} {d}" for n, d in self.unused]
        lines.append(f"  newly initialised   {len(self.new):4d} tensors {v.get('new', 0):>13,} values "
                     f"(Text2Sign's added modules, kept at their init):")
        lines += [f"      {g}" for g in abbreviate(self.new)]
        lines.append("  timesteps: the network sees t on the pretrained 0..999 scale (step k of T -> "
                     "round((k+1)*1000/T)-1)")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Sources and file reading


def resolve_source(source: str) -> str:
    """A local file path for `source`: a file, a directory with one checkpoint, an http(s) URL or hf:// path."""
    if source.startswith(("http://", "https://")):
        dest = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(source.split("?")[0]))
        if not os.path.isfile(dest):
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            try:
                torch.hub.download_url_to_file(source, dest, progress=True)
            except OSError as err:  # URLError and HTTPError are OSErrors
                raise UserError(f"cannot download {source} ({type(err).__name__}: {str(err)[:80]}); offline? "
                                f"{HOW_TO_GET}") from None
        return dest
    if source.startswith("hf://"):
        parts = source[len("hf://"):].split("/")
        if len(parts) < 3:
            raise UserError(f"model.pretrained={source!r}: expected hf://owner/repo/path/to/file.pt")
        from huggingface_hub import hf_hub_download

        try:
            return hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]))
        except (OSError, ValueError) as err:  # hub errors derive from these (offline, not found, ...)
            raise UserError(f"cannot fetch {source} ({type(err).__name__}); offline? {HOW_TO_GET}") from None
    if os.path.isdir(source):
        found = sorted(glob.glob(os.path.join(source, "*.pt")) + glob.glob(os.path.join(source, "*.pth")))
        preferred = [p for p in found if "tinydit" in os.path.basename(p).lower()] or found
        if not preferred:
            raise UserError(f"no .pt file in the folder {source}; {HOW_TO_GET}")
        if len(preferred) > 1:
            raise UserError(f"the folder {source} holds several checkpoints "
                            f"({', '.join(os.path.basename(p) for p in preferred)}): set model.pretrained to one")
        return preferred[0]
    if not os.path.isfile(source):
        raise UserError(f"pretrained file not found: {source}; {HOW_TO_GET}")
    return source


def _torch_load(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):  # legacy (non-zip) files cannot be memory-mapped: read them whole
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: str) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """(state dict, which container, notes) from a release/training checkpoint or a bare state dict."""
    notes = []
    try:
        try:
            obj = _torch_load(path)
        except pickle.UnpicklingError as err:
            if "argparse.Namespace" not in str(err):
                raise
            # TinyFusion/DiT training checkpoints pickle their command-line args next to the weights.
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = _torch_load(path)
            notes.append("the file pickles an argparse.Namespace (training args): allowed as a safe global")
    except Exception as err:  # truncated, not a torch file, or pickled code
        raise UserError(f"cannot read pretrained file {path}: {type(err).__name__}: "
                        f"{str(err).splitlines()[0][:160]}") from None

    def is_state_dict(d):
        return isinstance(d, dict) and d and all(isinstance(v, torch.Tensor) for v in d.values())

    if isinstance(obj, dict) and is_state_dict(obj.get("ema")):
        container = "ema" + ("; the file also holds 'model' (not used)" if "model" in obj else "")
        state = obj["ema"]
    elif isinstance(obj, dict) and is_state_dict(obj.get("model")):
        container, state = "model (no 'ema' in the file)", obj["model"]
    elif is_state_dict(obj):
        container, state = "bare state dict", obj
    else:
        keys = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"{path} holds no DiT state dict (expected 'ema' / 'model' or a bare state dict; "
                        f"found {keys})")
    return state, container, notes


# ----------------------------------------------------------------------------------------------------------
# Planning and applying


def _rule_for(key: str) -> tuple[str, str] | None:
    hits = [(action, rule) for pattern, action, rule in RULES if re.fullmatch(pattern, key)]
    return hits[0] if len(hits) == 1 else None


def _listing(names, limit: int = 5) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def load_state_dict_into(model, state: dict[str, torch.Tensor], path: str = "<memory>",
                         container: str = "bare state dict") -> LoadReport:
    """Check every tensor against the rules, then copy; the model is untouched when anything does not fit."""
    targets = model.state_dict()  # tensors share storage with the parameters
    report = LoadReport(path, container, file_tensors=len(state))
    rules = {k: _rule_for(k) for k in state}  # (action, rule), or None when no rule or several match
    uncovered = [k for k, r in rules.items() if r is None]
    if uncovered:
        hint = " (a Text2Sign training checkpoint? use `main.py train --resume`)" if any(
            k.startswith("text_embedder") for k in uncovered) else ""
        raise UserError(f"{path}: {len(uncovered)} tensor(s) match no loading rule: {_listing(uncovered)}{hint}")
    missing = [k for k in state if rules[k][0] in ("exact", "adapt") and k not in targets]
    if missing:
        raise UserError(f"{path}: tensor(s) not in the model (another depth or architecture?): {_listing(missing)}")

    writes: dict[str, torch.Tensor] = {}
    mismatched = []
    latent_channels = state.get("x_embedder.proj.weight", targets["x_embedder.proj.weight"]).shape[1]
    for key, value in state.items():
        action, rule = rules[key]
        if action == "exact":
            if value.shape != targets[key].shape:
                mismatched.append(f"{key} file {_shape(value.shape)} vs model {_shape(targets[key].shape)}")
                continue
            writes[key] = value
            report.exact.append(key)
        elif action == "adapt":
            new = _adapt(key, value, targets[key].shape, model.patch_size, latent_channels, model.out_channels)
            if new is None:
                mismatched.append(f"{key} file {_shape(value.shape)} vs model {_shape(targets[key].shape)} "
                                  f"(rule {rule} does not apply)")
                continue
            writes[key] = new
            if new.shape == value.shape:
                report.exact.append(key)
            else:
                report.adapted.append((key, f"{_shape(value.shape)} -> {_shape(new.shape)}: {rule}"))
        elif action == "recompute":
            if value.shape[-1] != model.pos_embed.shape[-1]:
                mismatched.append(f"{key} file {_shape(value.shape)} vs model {_shape(model.pos_embed.shape)}")
                continue
            report.recomputed.append((key, _check_pos_embed(value, path, model)))
        else:
            report.unused.append((key, f"{_shape(value.shape)}: {rule}"))
    if mismatched:
        raise UserError(f"{path}: shape mismatch for {len(mismatched)} tensor(s) (wrong model.arch for this file?): "
                        f"{_listing(mismatched, 3)}")
    unsourced = [k for k in targets if k not in writes and not re.fullmatch(NEW, k)]
    if unsourced:
        raise UserError(f"{path}: the file has no value for {len(unsourced)} backbone tensor(s): "
                        f"{_listing(unsourced)}")
    report.new = [k for k in targets if k not in writes]

    with torch.no_grad():
        for key, value in writes.items():
            targets[key].copy_(value)
        model.pos_embed.copy_(sincos_2d(model.pos_embed.shape[-1], model.grid).unsqueeze(0))
    report.values = {
        "exact": sum(state[k].numel() for k in report.exact),
        "adapted": sum(writes[k].numel() for k, _ in report.adapted),
        "unused": sum(state[k].numel() for k, _ in report.unused),
        "new": sum(targets[k].numel() for k in report.new),
    }
    return report


def _adapt(key, value, target_shape, patch, latent_channels, out_channels) -> torch.Tensor | None:
    """The adapted tensor, or None when the rule cannot produce target_shape (hidden size or patch differ)."""
    if tuple(value.shape) == tuple(target_shape):
        return value
    if key == "x_embedder.proj.weight":
        if value.shape[0] != target_shape[0] or value.shape[2:] != target_shape[2:]:
            return None
        return adapt_patch_embed(value, target_shape[1])
    file_out = value.shape[0] // (patch * patch)
    if (value.shape[0] % (patch * patch) or file_out not in (latent_channels, 2 * latent_channels)
            or value.shape[1:] != target_shape[1:] or target_shape[0] != patch * patch * out_channels):
        return None
    return adapt_final_linear(value, patch, latent_channels, out_channels)


def _check_pos_embed(table: torch.Tensor, path: str, model) -> str:
    """The file's table must be DiT's fixed sin-cos grid; the model's own grid is recomputed instead."""
    n, dim = table.shape[-2], table.shape[-1]
    grid = int(round(n ** 0.5))
    if grid * grid != n:
        raise UserError(f"{path}: pos_embed {_shape(table.shape)} is not a square patch grid")
    diff = (table.reshape(n, dim).float() - sincos_2d(dim, grid)).abs().max().item()
    if diff > 1e-4:
        raise UserError(f"{path}: pos_embed is not DiT's fixed 2D sin-cos table (max |diff| {diff:.2e}); a learned "
                        f"position embedding cannot be recomputed")
    return (f"{_shape(table.shape)} {grid}x{grid} grid (matches the sin-cos formula, max |diff| {diff:.1e}) -> "
            f"{_shape(model.pos_embed.shape)} {model.grid}x{model.grid} grid, recomputed (non-persistent buffer)")


def load_pretrained(model, source: str) -> LoadReport:
    """Resolve `source`, read its state dict and load it into `model` by the rules above."""
    path = resolve_source(source)
    state, container, notes = read_state_dict(path)
    report = load_state_dict_into(model, state, path, container)
    report.notes = notes + report.notes
    return report
