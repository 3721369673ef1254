"""Frame strips: a real clip of each caption next to clips a checkpoint generates for it, as one PNG.

    python benchmarks/frame_strip.py --checkpoint checkpoints/demo/final.pt --out docs/demo_strip.png \
        [--text hello --text "thank you" --text "yes no please"] [--samples 2] [--guidance G] [--steps S] \
        [--noise_correlation R] [--eta E] [--seed 0] [--smoke]

For each caption: one row of the first real clip in the checkpoint's data folder (or its heldout/ subfolder) with
exactly that caption (for synthetic-vocabulary captions without one, the synthetic signer's render), then --samples
rows of generated clips (EMA weights; sample j draws its noise from (--seed, caption, j) like `sample`), every frame
left to right, scaled up 3x with nearest-neighbour so the hands' pixels stay visible. A caption with neither gets a
grey row. Prints what it drew. --smoke: one sample per caption, 2 sampler steps (unless --steps is given), the PNG in a
temp folder unless --out is given: checks the script with any checkpoint in seconds.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from data.folder import HELDOUT_DIR, find_pairs  # noqa: E402
from data.synth import VOCAB, render_clip  # noqa: E402
from dataset import load_clip, resize_frames, sample_frame_indices  # noqa: E402
from methods.pipeline import SignPipeline  # noqa: E402
from methods.sampling import sample_seed  # noqa: E402

GAP = 2  # pixels between clips


def real_clip(cfg, caption: str) -> tuple[np.ndarray | None, str]:
    """The first clip of the data folder (or heldout/) with this caption; else, when every word is in the synthetic
    vocabulary, the synthetic signer's render of it (the ground truth the demo data is drawn from)."""
    for folder in (cfg.data.data_dir, os.path.join(cfg.data.data_dir, HELDOUT_DIR)):
        if os.path.isdir(folder):
            for path, text in find_pairs(folder)[0]:
                if text.strip().lower() == caption.strip().lower():
                    return load_clip(path, cfg.data.num_frames, cfg.data.image_size, cfg.data.resize_mode), path
    words = caption.lower().split()
    if words and all(w in VOCAB for w in words):
        clip = render_clip(words)
        idx = sample_frame_indices([100.0] * len(clip), cfg.data.num_frames)
        return resize_frames(clip[idx], cfg.data.image_size, cfg.data.resize_mode), "rendered by data/synth.py"
    return None, "missing (grey row)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default=None, help="PNG to write (required unless --smoke)")
    p.add_argument("--text", action="append", default=None)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--noise_correlation", type=float, default=None)
    p.add_argument("--eta", type=float, default=None, help="DDIM stochasticity (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="1 sample, 2 sampler steps: checks the script runs")
    args = p.parse_args()
    if args.smoke:
        args.samples, args.steps = 1, args.steps or 2
        args.out = args.out or os.path.join(tempfile.mkdtemp(prefix="t2s_strip_"), "strip.png")
    if not args.out:
        p.error("--out is required")
    texts = args.text or ["hello", "thank you", "yes no please"]
    pipe = SignPipeline.from_pretrained(args.checkpoint)
    cfg = pipe.cfg
    settings = pipe.settings(steps=args.steps, guidance=args.guidance, eta=args.eta,
                             noise_correlation=args.noise_correlation)
    T, S = cfg.data.num_frames, cfg.data.image_size
    rows = []
    for text in texts:
        real, source = real_clip(cfg, text)
        rows.append(np.full((T, S, S, 3), 128, np.uint8) if real is None else real)
        rows.extend(pipe([text] * args.samples, seeds=[sample_seed(args.seed, text, j) for j in range(args.samples)],
                         settings=settings))
        print(f"{text!r}: real clip {source}, "
              f"{args.samples} generated (guidance {settings.guidance:g}, {settings.steps} {settings.sampler} steps, "
              f"eta {settings.eta:g}, noise correlation {settings.noise_correlation:g})")
    width = T * S + (T - 1) * GAP
    canvas = np.full((len(rows) * (S + GAP) - GAP, width, 3), 255, np.uint8)
    for r, clip in enumerate(rows):
        for f in range(T):
            canvas[r * (S + GAP):r * (S + GAP) + S, f * (S + GAP):f * (S + GAP) + S] = clip[f]
    from PIL import Image

    Image.fromarray(canvas).resize((canvas.shape[1] * args.scale, canvas.shape[0] * args.scale),
                                   Image.NEAREST).save(args.out)
    print(f"{args.out}: per caption, the real clip then {args.samples} generated rows; frames left to right")
    return 0


if __name__ == "__main__":
    sys.exit(main())
