"""Evaluator files: a dict of one state_dict and primitives, written atomically, loadable with weights_only=True."""
from __future__ import annotations

import os

import torch

from methods.checkpoint import read_state
from methods.evaluation.model import Evaluator
from utils.atomic import atomic_write
from utils.errors import UserError

KIND = "text2sign-evaluator"
EVALUATOR_FILE = "evaluator.pt"  # written next to the experiment's checkpoints; `evaluate` looks for it there
# data settings an evaluator was trained under; scoring clips made under others would be silently wrong
PREPROCESSING = ("data_dir", "resize_mode", "allow_stills", "caption_normalize", "trim_still")


def save_evaluator(path: str, model: Evaluator, **meta) -> None:
    """meta: primitives only (encoder name, max_length, data settings, validation numbers)."""
    state = {"kind": KIND, "hparams": dict(model.hparams),
             "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **meta}
    with atomic_write(path) as f:
        torch.save(state, f)


def load_evaluator(path: str, device="cpu") -> tuple[Evaluator, dict]:
    """(model in eval mode, the saved dict without weights). A missing or foreign file is a one-line UserError."""
    state = read_state(path, "evaluator", lambda s: s.get("kind") == KIND,
                       f"{path} is not a Text2Sign evaluator (made by `python main.py train-evaluator`)",
                       ": run `python main.py train-evaluator` with the data and --preset/--set of the model's "
                       "training first (or pass --evaluator PATH)")
    model = Evaluator(**state["hparams"])
    model.load_state_dict(state.pop("state_dict"))
    return model.to(device).eval(), state


def check_preprocessing(meta: dict, dc, ev_path: str, source: str) -> None:
    """The evaluator saw clips made as dc (a DataConfig) makes them: same frames, size, folder and preprocessing.
    A setting an older evaluator file did not record is not compared. source: the train-evaluator arguments that
    would make a matching one (`--checkpoint PATH`, or `--preset P --set ...`)."""
    mismatches = []
    for key in ("num_frames", "image_size"):
        if meta["hparams"][key] != getattr(dc, key):
            mismatches.append(f"data.{key}={meta['hparams'][key]} (not {getattr(dc, key)})")
    for key in PREPROCESSING:
        if key not in meta:
            continue
        mine, theirs = getattr(dc, key), meta[key]
        same = os.path.realpath(mine) == os.path.realpath(theirs) if key == "data_dir" else mine == theirs
        if not same:
            mismatches.append(f"data.{key}={theirs!r} (not {mine!r})")
    if mismatches:
        raise UserError(f"evaluator {ev_path} was trained with {', '.join(mismatches)}: train one for this model with "
                        f"`python main.py train-evaluator {source}`")
