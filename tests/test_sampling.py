"""Sampling settings, the per-clip seed rule, classifier-free guidance arithmetic and the unknown-words warning."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from config import Config, DiffusionConfig
from diffusion import GaussianDiffusion
from diffusion.gaussian_diffusion import draw_noise
from methods.evaluation.evaluate import generate_clips
from methods.pipeline import SignPipeline
from methods.sampling import SamplingSettings, generate, sample_seed
from models.text_encoder import TextEmbeddings
from utils.errors import UserError
from utils.pixels import to_uint8


def test_settings_default_to_the_checkpoints_diffusion_config():
    dc = DiffusionConfig(timesteps=50, sample_steps=20, guidance_scale=4.0, sampler="ddim", eta=0.3)
    assert SamplingSettings.resolve(dc) == SamplingSettings(steps=20, guidance=4.0, sampler="ddim", eta=0.3)
    assert SamplingSettings.resolve(dc, steps=50, guidance=1, eta=0) == SamplingSettings(50, 1.0, "ddim", 0.0)
    assert SamplingSettings.resolve(dc, sampler="ddpm") == SamplingSettings(50, 4.0, "ddpm", 0.3)


def test_noise_correlation_is_the_configs_sampling_value_else_trainings_unless_a_flag_says():
    assert SamplingSettings.resolve(DiffusionConfig(frame_noise_correlation=0.5)).noise_correlation == 0.5
    dc = DiffusionConfig(frame_noise_correlation=0.5, sample_noise_correlation=0.9)
    assert SamplingSettings.resolve(dc).noise_correlation == 0.9
    assert SamplingSettings.resolve(dc, noise_correlation=0).noise_correlation == 0.0


@pytest.mark.parametrize("flags, needle", [
    ({"steps": 0}, "--steps must be in [1, 50]"),  # 0 used to mean "the default" silently
    ({"steps": 51}, "--steps must be in [1, 50]"),
    ({"steps": -3}, "--steps must be in [1, 50]"),
    ({"sampler": "ddpm", "steps": 10}, "ddpm runs all 50"),
    ({"sampler": "euler"}, "--sampler must be one of ddim, dpm++2m, ddpm"),
    ({"guidance": float("nan")}, "--guidance must be a finite number"),
    ({"noise_correlation": 1.0}, "--noise_correlation must be in [0, 1), got 1.0"),
    ({"noise_correlation": -0.1}, "--noise_correlation must be in [0, 1), got -0.1"),
    ({"noise_correlation": float("nan")}, "--noise_correlation must be in [0, 1), got nan"),
    ({"guidance": float("inf")}, "--guidance must be a finite number"),
    ({"guidance": -1.0}, "--guidance must be a finite number >= 0"),
    ({"eta": float("nan")}, "--eta must be a finite number"),
    ({"sampler": "dpm++2m", "eta": 0.5}, "--eta 0.5: dpm++2m solves the deterministic ODE"),
])
def test_bad_sampling_flags_are_one_line_user_errors(flags, needle):
    with pytest.raises(UserError) as err:
        SamplingSettings.resolve(DiffusionConfig(timesteps=50), **flags)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_sample_seed_is_a_function_of_seed_caption_and_index_only():
    assert sample_seed(0, "hello", 0) == 5168114809830924359  # pinned: changing the rule changes every clip
    seeds = {sample_seed(s, c, j) for s in (0, 1) for c in ("hello", "thank you") for j in (0, 1)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)
    assert sample_seed(3, "hello", 1) == sample_seed(3, "hello", 1)


class StubModel(nn.Module):
    """Output 0.5 x + c, with c the first pooled value for a kept caption and -2 for a dropped one."""
    in_channels = 3

    def forward(self, x, t, tokens, mask, pooled, drop=None):
        c = pooled[:, :1, None, None, None].expand_as(x)
        if drop is not None:
            c = torch.where(drop[:, None, None, None, None], torch.full_like(c, -2.0), c)
        return 0.5 * x + c


class OneModelCall:
    """Stands in for GaussianDiffusion.sample: evaluates the guided model function once and keeps its output."""

    def sample(self, model_fn, shape, steps, sampler, eta, generator, device, progress, noise_correlation):
        self.x = draw_noise(shape, generator)
        self.out = model_fn(self.x, torch.zeros(shape[0], dtype=torch.long))
        return torch.zeros(shape)


def stub_text(pooled_values):
    n = len(pooled_values)
    return TextEmbeddings(torch.zeros(n, 2, 4), torch.ones(n, 2, dtype=torch.bool),
                          torch.tensor(pooled_values, dtype=torch.float32)[:, None].expand(n, 4).clone())


def test_guidance_combines_conditional_and_unconditional_outputs():
    diffusion, text = OneModelCall(), stub_text([0.25, -1.0])
    settings = SamplingSettings(steps=1, guidance=3.0, sampler="ddim", eta=0.0)
    generate(StubModel(), diffusion, text, settings, [1, 2], num_frames=2, image_size=4)
    cond = 0.5 * diffusion.x + torch.tensor([0.25, -1.0])[:, None, None, None, None]
    uncond = 0.5 * diffusion.x - 2.0
    assert torch.allclose(diffusion.out, uncond + 3.0 * (cond - uncond), atol=1e-6)
    # The same noise per seed whatever the batch: row 1 alone gets the noise it got in the batch of two.
    alone = OneModelCall()
    generate(StubModel(), alone, stub_text([-1.0]), settings, [2], num_frames=2, image_size=4)
    assert torch.equal(alone.x[0], diffusion.x[1])


def test_guidance_one_is_the_plain_conditional_path():
    torch.manual_seed(0)
    model = StubModel()
    diffusion = GaussianDiffusion("cosine", 10, "eps")
    text = stub_text([0.25, -0.5])
    settings = SamplingSettings(steps=4, guidance=1.0, sampler="ddim", eta=0.0)
    got = generate(model, diffusion, text, settings, [5, 6], num_frames=2, image_size=4)
    plain = diffusion.sample(lambda x, t: model(x, t, text.tokens, text.mask, text.pooled), (2, 3, 2, 4, 4), steps=4,
                             generator=[torch.Generator().manual_seed(s) for s in (5, 6)])
    expected = ((plain.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    assert np.array_equal(got, expected)


def test_generate_starts_from_noise_with_the_settings_frame_correlation():
    torch.manual_seed(0)
    model, diffusion = StubModel(), GaussianDiffusion("cosine", 10, "eps")
    text = stub_text([0.25, -0.5])
    clips = {rho: generate(model, diffusion, text, SamplingSettings(4, 1.0, "ddim", 0.0, rho), [5, 6], num_frames=2,
                           image_size=4) for rho in (0.0, 0.9)}
    shared = diffusion.sample(lambda x, t: model(x, t, text.tokens, text.mask, text.pooled), (2, 3, 2, 4, 4), steps=4,
                              generator=[torch.Generator().manual_seed(s) for s in (5, 6)], noise_correlation=0.9)
    assert np.array_equal(clips[0.9], to_uint8(shared)) and not np.array_equal(clips[0.9], clips[0.0])


def stub_pipeline(state: dict | None = None) -> SignPipeline:
    """StubModel behind a SignPipeline drawing 2 frames of 4x4."""
    cfg = Config()
    cfg.data.num_frames, cfg.data.image_size = 2, 4
    return SignPipeline(cfg, StubModel(), GaussianDiffusion("cosine", 10, "eps"), state=state)


def test_a_captions_clips_do_not_depend_on_the_other_captions():
    pipe = stub_pipeline()
    settings = SamplingSettings(steps=3, guidance=2.0, sampler="ddim", eta=0.0)
    full = stub_text([0.1, 0.2, 0.3])
    many = generate_clips(pipe, full, ["a", "b", "c"], settings, 2, 7, 4, False)
    alone = generate_clips(pipe, full.select(torch.tensor([2])), ["c"], settings, 2, 7, 1, False)
    assert many.shape == (2, 3, 2, 4, 4, 3)
    assert np.array_equal(many[:, 2], alone[:, 0])
    assert not np.array_equal(many[0, 2], many[1, 2])  # the two samples of one caption differ


def test_the_pipeline_samples_in_batches_of_at_most_batch_size_and_the_clips_do_not_change(monkeypatch):
    import methods.pipeline

    pipe, text = stub_pipeline(), stub_text([0.1, -0.2, 0.3, 0.4, -0.5])
    settings = SamplingSettings(steps=3, guidance=2.0, sampler="ddim", eta=0.0)
    captions, seeds = ["a", "b", "c", "d", "e"], [11, 12, 13, 14, 15]
    whole = pipe(captions, seeds=seeds, settings=settings, text=text)
    sizes = []

    def counting(model, diffusion, text, *args, **kwargs):
        sizes.append(text.pooled.shape[0])
        return generate(model, diffusion, text, *args, **kwargs)

    monkeypatch.setattr(methods.pipeline, "generate", counting)
    batched = pipe(captions, seeds=seeds, settings=settings, text=text, batch_size=2)
    assert sizes == [2, 2, 1] and whole.shape == (5, 2, 4, 4, 3)
    assert np.array_equal(batched, whole)


def test_unknown_words_are_named_once(capsys):
    pipe = stub_pipeline({"caption_words": ["hello", "thank", "you"]})
    assert pipe.warn_unknown_words(["Hello zebra!", "thank you", "zebra dance"]) == ["zebra", "dance"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: never in the training captions, so the model has not learned them: 'zebra', 'dance'"]
    assert pipe.warn_unknown_words(["thank you, hello"]) == [] and capsys.readouterr().err == ""
