"""Checkpoint files: dicts of state_dicts and primitives, written atomically, loadable with weights_only=True."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from utils.atomic import atomic_write
from utils.errors import UserError

FORMAT_VERSION = 1


def save_checkpoint(path: str, state: dict) -> None:
    """Atomic: a kill mid-write leaves the previous file (or none), never a half-written one. A failed write (a full
    disk) raises its OSError, which torch's zip writer would otherwise replace with a RuntimeError."""
    with atomic_write(path) as f:
        recorder = _WriteErrors(f)
        try:
            torch.save({"format_version": FORMAT_VERSION, **state}, recorder)
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise


class _WriteErrors:
    """A file's write and flush, remembering the OSError of a failed write."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def read_state(path: str, what: str, is_ours, not_ours: str, missing: str = "", map_location="cpu") -> dict:
    """A dict saved by torch.save, read with weights_only=True, that is_ours(state) accepts; otherwise one UserError
    line: "<what> not found: path<missing>", "cannot read <what> path: ..." or not_ours. The one reader of every file
    this project writes with torch.save (checkpoints, autoencoder runs, evaluators)."""
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}{missing}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated / foreign files
        detail = str(err).splitlines()[0][:200] if str(err).strip() else "empty or truncated file"
        raise UserError(f"cannot read {what} {path}: {type(err).__name__}: {detail}") from None
    if not isinstance(state, dict) or not is_ours(state):
        raise UserError(not_ours)
    return state


def load_checkpoint(path: str, map_location="cpu") -> dict:
    return read_state(path, "checkpoint", lambda s: s.get("format_version") == FORMAT_VERSION and "ema" in s,
                      f"{path} is not a Text2Sign checkpoint (format {FORMAT_VERSION})", map_location=map_location)


def load_weights(model: torch.nn.Module, weights: dict, source: str) -> None:
    """Copy a saved state dict into model, after check_weights_fit."""
    check_weights_fit(model, weights, source)
    model.load_state_dict(weights)


def check_weights_fit(model: torch.nn.Module, weights: dict, source: str) -> None:
    """A UserError naming the first tensor of weights that does not fit model (missing, extra or of another shape)
    and how many differ: a checkpoint written by another version of the model's code. model may be on "meta"."""
    own = model.state_dict()
    wrong = [f"{k}: {tuple(weights[k].shape)} in the file, {tuple(v.shape)} in the model" for k, v in own.items()
             if k in weights and tuple(weights[k].shape) != tuple(v.shape)]
    wrong += [f"{k} missing from the file" for k in own if k not in weights]
    wrong += [f"{k} not in the model" for k in weights if k not in own]
    if wrong:
        raise UserError(f"{source} does not fit the {type(model).__name__} its config builds ({len(wrong)} tensor(s) "
                        f"differ, first {wrong[0]}): another model setting or another version of this model's code "
                        f"wrote it; train again, or use the settings and Text2Sign version that wrote it")


def nonfinite_tensors(state: dict, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors holding NaN or inf, in a (nested) dict of tensors."""
    bad = []
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            bad += nonfinite_tensors(value, name + ".")
        elif torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad.append(name)
    return bad


def nonfinite_summary(state: dict) -> str | None:
    """The first few non-finite tensors of `state` for a one-line message ("a, b, c ..."), or None if all finite."""
    bad = nonfinite_tensors(state)
    return ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "") if bad else None


def rng_state(generator: torch.Generator) -> dict:
    """Every random stream a resumed run must continue: python, numpy, torch (CPU, CUDA) and the trainer's own."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "trainer": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["trainer"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    """random.setstate needs tuples; a round trip through torch.save may hand back lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
