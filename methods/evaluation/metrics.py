"""Metrics of `main.py evaluate`: caption retrieval (by the learned evaluator, and training-free by nearest neighbour
in fixed pixel features), distribution distances (KID, Frechet), SSIM / PSNR, frame-to-frame change, and for a latent
model the same retrieval and image scores of real clips through its autoencoder (the ceiling of its latent space).

numpy / torch only; score_clips combines them for one group of K captions with N generated samples each.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from methods.evaluation.model import Evaluator, reorderings
from utils.ssim import ssim as ssim_images


def retrieval_ranks(video: torch.Tensor, text: torch.Tensor) -> np.ndarray:
    """Rank (0 = first) of caption i for clip i among all K captions; ties count against the clip."""
    sims = video @ text.T  # (K, K)
    return ((sims >= sims.diag()[:, None]).sum(1) - 1).numpy()


def recall(ranks: np.ndarray, k: int) -> float:
    return float((ranks < k).mean())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2) between feature sets (N, D); sqrt via eigendecompositions.

    tr((S_a S_b)^1/2) = sum of sqrt(eigenvalues of S_a^1/2 S_b S_a^1/2), a symmetric PSD matrix."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Frechet distance needs >= 2 samples per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(w.clip(min=0))) @ v.T
    m = root_a @ s_b @ root_a
    cross = np.sqrt(np.linalg.eigvalsh((m + m.T) / 2).clip(min=0)).sum()
    return max(0.0, float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross))


def kid(a, b, degree: int = 3) -> float:
    """Kernel distance (KID, Binkowski et al. 2018): the unbiased MMD^2 between feature sets (m, D) and (n, D) under the
    polynomial kernel (x.y / D + 1)^degree. Unbiased at any m, n >= 2, where the Frechet distance of fewer samples
    than dimensions rests on a rank-deficient covariance; 0 = same distribution, so noise can make it slightly < 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m, n, d = len(a), len(b), a.shape[1]
    if m < 2 or n < 2:
        raise ValueError("the kernel distance needs >= 2 samples per set")
    kaa, kbb, kab = ((x @ y.T / d + 1) ** degree for x, y in ((a, a), (b, b), (a, b)))
    within = (kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
    return float(within - 2 * kab.mean())


FIXED_GRID = 16  # training-free features: each frame area-averaged to at most 16x16 (hands of 64 px clips survive)


def fixed_features(clips) -> np.ndarray:
    """(N, F) training-free features of clips (N, T, H, W, 3): the frames shrunk by area averaging, and their
    frame-to-frame differences, each block scaled to unit weight per element count so appearance and motion count
    alike. Nothing learned: a second opinion that cannot share a learned evaluator's blind spots."""
    x = torch.as_tensor(np.asarray(clips), dtype=torch.float32).div(255)
    n, t = x.shape[:2]
    side = min(FIXED_GRID, x.shape[2], x.shape[3])
    small = F.adaptive_avg_pool2d(x.flatten(0, 1).permute(0, 3, 1, 2), side).reshape(n, t, -1)  # (N, T, 3*side^2)
    blocks = [small.flatten(1)] + ([(small[:, 1:] - small[:, :-1]).flatten(1)] if t > 1 else [])
    return torch.cat([blk / math.sqrt(blk.shape[1]) for blk in blocks], 1).numpy()


def standardised(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Features centred on the reference set's mean and divided by its overall spread (one number): the scale the
    kernel distance's (x.y / D + 1)^3 expects, which raw pixel features (tiny dot products) are far from."""
    return (features - reference.mean(0)) / max(float(reference.std()), 1e-12)


def nearest_ranks(query, reference, target=None) -> np.ndarray:
    """Rank (0 = nearest) of reference target[i] (default i) for query i among all references by Euclidean distance;
    ties count against the query, as in retrieval_ranks."""
    d = torch.cdist(torch.as_tensor(query, dtype=torch.float64), torch.as_tensor(reference, dtype=torch.float64))
    target = torch.arange(len(d)) if target is None else torch.as_tensor(target)
    own = d.gather(1, target[:, None])
    return ((d <= own).sum(1) - 1).numpy()


def ssim(x, y, data_range: float = 255.0) -> np.ndarray:
    """Mean SSIM of image pairs (N, H, W, C), averaged over channels: (N,) (utils.ssim, in float64)."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64).permute(0, 3, 1, 2)
    y = torch.as_tensor(np.asarray(y), dtype=torch.float64).permute(0, 3, 1, 2)
    return ssim_images(x, y, data_range).numpy()


def psnr(x, y, data_range: float = 255.0, cap: float = 100.0) -> float:
    """PSNR in dB over all pixels of two arrays; identical inputs give `cap` (JSON has no infinity)."""
    mse = float(np.mean((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
    return cap if mse == 0 else min(cap, 10 * math.log10(data_range**2 / mse))


def temporal_change(clip) -> float:
    """Mean absolute frame-to-frame pixel change (0..255) of a clip (T, H, W, C): ~0 frozen, high = flicker."""
    clip = np.asarray(clip, np.float32)
    return float(np.abs(np.diff(clip, axis=0)).mean()) if len(clip) > 1 else 0.0


def score_clips(ev: Evaluator, text: torch.Tensor, real, generated, captions: list[str] | None = None,
                other_real: tuple | None = None) -> dict:
    """Metrics of K >= 2 real clips and their generated samples against their K captions (text: (K, D) embeddings).

    real: uint8 (K, T, H, W, 3); generated: (K, T, H, W, 3) or N samples per caption (N, K, T, H, W, 3). Every
    generated clip is ranked among the K captions; R@k and the image metrics average over all N*K clips, and
    generated_r1_se is the standard error of R@1 over the K captions (each caption's share of its N samples that
    rank first), which is what tells a real difference from a lucky draw. With `captions` (the K strings), each
    per-caption row also names the caption each generated sample was retrieved as.

    Beside the evaluator: nearest-neighbour retrieval in fixed pixel features (nn_*: a generated clip is right when
    the real clip of its own caption is its nearest among the K), whose real reference needs a second real clip of a
    caption: other_real = (caption indices (M,), clips (M, T, H, W, 3)), when the data has such clips; and the kernel
    distance (KID) in both feature spaces, valid at these sample sizes (the Frechet distance is reported with its
    sample and dimension counts: below dims + 1 samples its covariance is rank-deficient)."""
    real, generated = np.asarray(real), np.asarray(generated)
    if generated.ndim == real.ndim:
        generated = generated[None]
    N, K, T = generated.shape[0], len(real), real.shape[1]
    real_emb = ev.encode_clips(real)
    gen_emb = torch.stack([ev.encode_clips(g) for g in generated])  # (N, K, D)
    ranks = {"real": retrieval_ranks(real_emb, text)}
    for name, order in reorderings(T).items():
        ranks[f"real_{name}"] = retrieval_ranks(ev.encode_clips(real, order=order), text)
    gen_ranks = np.stack([retrieval_ranks(e, text) for e in gen_emb], axis=1)  # (K, N)
    top = (gen_emb @ text.T).argmax(-1).T.numpy()  # (K, N): the caption each sample is closest to
    ranks["generated"] = gen_ranks
    out = {"num_captions": K, "samples_per_caption": N, "chance_r1": 1 / K, "chance_r5": min(5, K) / K}
    for name, r in ranks.items():
        out[f"{name}_r1"], out[f"{name}_r5"] = recall(r, 1), recall(r, 5)
    hits = (gen_ranks < 1).mean(1)  # (K,)
    out["generated_r1_se"] = float(hits.std(ddof=1) / math.sqrt(K))
    for k in ("r1", "r5"):
        out[f"{k}_ratio"] = out[f"generated_{k}"] / out[f"real_{k}"] if out[f"real_{k}"] else None
    out["true_caption_similarity"] = {"real": float((real_emb * text).sum(1).mean()),
                                      "generated": float((gen_emb * text).sum(-1).mean())}
    out["frechet_distance"] = frechet_distance(gen_emb.flatten(0, 1).numpy(), real_emb.numpy())
    out["feature_counts"] = {"generated": N * K, "real": K, "dims": int(real_emb.shape[1])}
    out["frechet_rank_deficient"] = K <= real_emb.shape[1]
    out["kid"] = kid(gen_emb.flatten(0, 1).numpy(), real_emb.numpy())
    real_fixed = fixed_features(real)
    gen_fixed = np.stack([fixed_features(g) for g in generated])  # (N, K, F)
    out["kid_fixed"] = kid(standardised(gen_fixed.reshape(N * K, -1), real_fixed), standardised(real_fixed, real_fixed))
    nn_gen = np.stack([nearest_ranks(g, real_fixed) for g in gen_fixed], axis=1)  # (K, N)
    out["nn_generated_r1"] = recall(nn_gen, 1)
    out["nn_real_r1"], out["nn_real_captions"] = None, 0
    if other_real is not None and len(other_real[0]):
        idx, clips = other_real
        out["nn_real_r1"] = recall(nearest_ranks(fixed_features(clips), real_fixed, idx), 1)
        out["nn_real_captions"] = len(idx)
    ssims = np.array([[float(ssim(g, r).mean()) for g in generated[:, i]] for i, r in enumerate(real)])  # (K, N)
    psnrs = np.array([[psnr(g, r) for g in generated[:, i]] for i, r in enumerate(real)])
    change_gen = np.array([[temporal_change(g) for g in sample] for sample in generated])
    out.update(ssim=float(ssims.mean()), psnr=float(psnrs.mean()), temporal_change_generated=float(change_gen.mean()),
               temporal_change_real=float(np.mean([temporal_change(r) for r in real])))
    out["temporal_change_ratio"] = out["temporal_change_generated"] / max(out["temporal_change_real"], 1e-9)
    out["per_caption"] = [{"real_rank": int(a), "generated_ranks": [int(x) for x in b],
                           "nn_generated_ranks": [int(x) for x in c], "ssim": float(s.mean()), "psnr": float(q.mean())}
                          for a, b, c, s, q in zip(ranks["real"], gen_ranks, nn_gen, ssims, psnrs)]
    if captions is not None:
        for row, c, t in zip(out["per_caption"], captions, top):
            row.update(caption=c, retrieved_as=[captions[i] for i in t])
    return out


def score_reconstruction(ev: Evaluator, text: torch.Tensor, real, reconstructed) -> dict:
    """The latent space's ceiling: the K real clips encoded and decoded by the autoencoder (uint8, like `real`),
    retrieved among the K captions and compared with the real clips as generated ones are."""
    real, reconstructed = np.asarray(real), np.asarray(reconstructed)
    ranks = retrieval_ranks(ev.encode_clips(reconstructed), text)
    return {"reconstructed_r1": recall(ranks, 1), "reconstructed_r5": recall(ranks, 5),
            "reconstructed_ssim": float(np.mean([ssim(c, r).mean() for c, r in zip(reconstructed, real)])),
            "reconstructed_psnr": float(np.mean([psnr(c, r) for c, r in zip(reconstructed, real)]))}


def seen_unseen(rows: list[dict]) -> dict:
    """R@1 / R@5 of the captions that occur in the training split ("seen") and of the others ("unseen"), ranked
    among all K captions of the group; generated R@k averages over each caption's samples."""
    out = {}
    for name, keep in (("seen", True), ("unseen", False)):
        sub = [r for r in rows if r["in_training"] == keep]
        if sub:
            real = np.array([r["real_rank"] for r in sub])
            gen = np.array([r["generated_ranks"] for r in sub])  # (k, N)
            out[name] = {"num_captions": len(sub), "real_r1": recall(real, 1), "real_r5": recall(real, 5),
                         "generated_r1": recall(gen, 1), "generated_r5": recall(gen, 5)}
    return out
