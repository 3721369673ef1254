"""GaussianDiffusion: forward process, parametrisations, DDIM/DPM-Solver/DDPM steps against hand-written formulas,
sampling."""
import math

import pytest
import torch

from config import DiffusionConfig
from diffusion import GaussianDiffusion

SHAPE = (2, 3, 4, 8, 8)  # (B, C, F, H, W): a tiny video batch


def make_x0(seed=0, shape=SHAPE, dtype=torch.float32):
    """A clean sample strictly inside [-1, 1], so clipping never changes an exact x0 estimate."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=dtype) * 1.8 - 0.9)


def randn(seed, shape=SHAPE, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def alpha_bar(diffusion, t):
    """ᾱ at step indices t as a float64 (B, 1, 1, 1, 1) tensor, straight from the schedule."""
    return diffusion.schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1, 1)


def oracle(diffusion, x0):
    """A perfect model for a known x0: returns the true eps (or v) for whatever x_t it is given."""
    table = diffusion.schedule.model_timesteps.float()

    def model_fn(x_t, model_time):
        ab = alpha_bar(diffusion, torch.searchsorted(table, model_time)).float()
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        return eps if diffusion.prediction == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * x0
    return model_fn


def test_bad_prediction_and_schedule():
    with pytest.raises(ValueError) as err:
        GaussianDiffusion(prediction="x0")
    assert "'eps'" in str(err.value) and "'v'" in str(err.value)
    with pytest.raises(ValueError, match="cosine"):
        GaussianDiffusion(schedule="exponential")


def test_model_time_and_timestep_sampling():
    d = GaussianDiffusion("cosine", 50)
    mt = d.model_time(torch.tensor([0, 1, 49]))
    assert mt.dtype == torch.float32 and mt.tolist() == [19.0, 39.0, 999.0]
    torch.manual_seed(123)  # the draws come from the generator, whatever the global RNG holds
    t1 = d.sample_timesteps(4096, generator=torch.Generator().manual_seed(3))
    # pinned (printed once, torch 2 CPU): torch.randint's stream for seed 3, integers, the same on every machine
    assert t1.dtype == torch.long and t1[:12].tolist() == [36, 48, 37, 17, 10, 30, 40, 25, 31, 39, 14, 41]
    assert t1.sum().item() == 101962 and t1.min() == 0 and t1.max() == 49


def test_shifted_timesteps_follow_the_formula_and_train_the_noisy_end_more():
    assert GaussianDiffusion(timestep_shift=1.0).sample_timesteps(64, torch.Generator().manual_seed(3)).tolist() == \
        GaussianDiffusion().sample_timesteps(64, torch.Generator().manual_seed(3)).tolist()  # 1: the uniform draw
    d = GaussianDiffusion("cosine", 50, timestep_shift=3.0)
    t = d.sample_timesteps(100_000, generator=torch.Generator().manual_seed(3))
    u = torch.rand(100_000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(t, (3 * u / (1 + 2 * u) * 50).long())  # the same uniform stream, mapped
    assert t.min() == 0 and t.max() == 49
    # P(shifted u >= 1/2) = P(u >= 1 / (k + 1)) = k / (k + 1): three draws in four from the noisier half at k = 3
    assert abs((t >= 25).float().mean().item() - 0.75) < 0.01
    assert abs((t < 5).float().mean().item() - (1 - 3 * 0.9 / (1 + 2 * 0.9))) < 0.005  # the clean tenth: 1/28
    with pytest.raises(ValueError, match="timestep_shift"):
        GaussianDiffusion(timestep_shift=0.0)
    assert GaussianDiffusion.from_config(DiffusionConfig(timestep_shift=2.5)).timestep_shift == 2.5


def test_q_sample_by_hand():
    d = GaussianDiffusion("linear", 1000)  # step 0 is the first base step: ᾱ_0 = 1 - 1e-4
    x0 = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    noise = torch.tensor([[2.0, 1.0]], dtype=torch.float64)
    x_t = d.q_sample(x0, torch.tensor([0]), noise)
    expected = [math.sqrt(0.9999) * 1.0 + 0.01 * 2.0, math.sqrt(0.9999) * -0.5 + 0.01 * 1.0]
    assert x_t[0].tolist() == pytest.approx(expected, rel=1e-12)


def test_v_target_identities():
    d = GaussianDiffusion("cosine", 50, prediction="v")
    x0, noise = make_x0(dtype=torch.float64), randn(1, dtype=torch.float64)
    t = torch.tensor([3, 41])
    ab = alpha_bar(d, t)
    x_t, v = d.q_sample(x0, t, noise), d.target(x0, t, noise)
    torch.testing.assert_close(v, ab.sqrt() * noise - (1 - ab).sqrt() * x0)
    torch.testing.assert_close(ab.sqrt() * x_t - (1 - ab).sqrt() * v, x0)
    torch.testing.assert_close((1 - ab).sqrt() * x_t + ab.sqrt() * v, noise)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_predict_x0_eps_inverts_q_sample(prediction):
    d = GaussianDiffusion("cosine", 50, prediction=prediction)
    x0, noise = make_x0(dtype=torch.float64), randn(1, dtype=torch.float64)
    for t in (torch.tensor([0, 49]), torch.tensor([17, 30])):
        x_t = d.q_sample(x0, t, noise)
        x0_hat, eps_hat = d.predict_x0_eps(x_t, t, d.target(x0, t, noise))
        torch.testing.assert_close(x0_hat, x0)
        torch.testing.assert_close(eps_hat, noise)


def test_clip_x0_keeps_pair_consistent():
    d = GaussianDiffusion("cosine", 50)
    x_t, t = randn(2, dtype=torch.float64) * 3, torch.tensor([5, 10])
    x0_hat, eps_hat = d.predict_x0_eps(x_t, t, randn(3, dtype=torch.float64), clip_x0=True)
    assert x0_hat.abs().max() <= 1
    ab = alpha_bar(d, t)
    torch.testing.assert_close(ab.sqrt() * x0_hat + (1 - ab).sqrt() * eps_hat, x_t)


def test_training_losses():
    d = GaussianDiffusion("cosine", 50, prediction="v")
    x0, noise, t = make_x0(), randn(1), torch.tensor([0, 49])
    seen = {}

    def model_fn(x_t, model_time, text=None):
        seen["time"], seen["text"] = model_time, text
        return 0.5 * x_t

    out = d.training_losses(model_fn, x0, t, noise, text="hi")
    assert seen["text"] == "hi" and seen["time"].tolist() == [19.0, 999.0]
    torch.testing.assert_close(out["x_t"], d.q_sample(x0, t, noise))
    torch.testing.assert_close(out["target"], d.target(x0, t, noise))
    per_sample = ((0.5 * out["x_t"] - out["target"]) ** 2).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(out["loss_per_sample"], per_sample)
    torch.testing.assert_close(out["loss"], per_sample.mean())
    assert out["loss"].ndim == 0 and out["pred"].shape == SHAPE


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_by_hand(eta):
    d = GaussianDiffusion("linear", 50)
    x_t, model_out, noise = randn(1, dtype=torch.float64), randn(2, dtype=torch.float64), randn(3, dtype=torch.float64)
    t, t_prev = torch.tensor([30, 30]), torch.tensor([20, 20])
    a_t, a_prev = d.schedule.alphas_cumprod[30].item(), d.schedule.alphas_cumprod[20].item()
    x0 = (x_t - math.sqrt(1 - a_t) * model_out) / math.sqrt(a_t)
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
    expected = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma ** 2) * model_out + sigma * noise
    got = d.ddim_step(x_t, t, t_prev, model_out, eta, noise=noise, clip_x0=False)
    torch.testing.assert_close(got, expected)


def test_ddim_step_to_clean_image_returns_x0_hat():
    d = GaussianDiffusion("cosine", 50)
    x_t, model_out, t = randn(1), randn(2), torch.tensor([4, 4])
    got = d.ddim_step(x_t, t, torch.tensor([-1, -1]), model_out, eta=1.0, noise=randn(3))
    torch.testing.assert_close(got, d.predict_x0_eps(x_t, t, model_out, clip_x0=True)[0])


def test_ddpm_step_posterior():
    d = GaussianDiffusion("cosine", 50)
    x0, noise, step_noise = make_x0(dtype=torch.float64), randn(1, dtype=torch.float64), randn(2, dtype=torch.float64)
    k = 25
    t = torch.tensor([k, k])
    x_t = d.q_sample(x0, t, noise)
    a_t, a_prev = d.schedule.alphas_cumprod[k].item(), d.schedule.alphas_cumprod[k - 1].item()
    beta = d.schedule.betas[k].item()
    mean = (math.sqrt(a_prev) * beta / (1 - a_t)) * x0 + (math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)) * x_t
    var = beta * (1 - a_prev) / (1 - a_t)
    torch.testing.assert_close(d.ddpm_step(x_t, t, noise, noise=torch.zeros_like(x_t)), mean)
    torch.testing.assert_close(d.ddpm_step(x_t, t, noise, noise=step_noise), mean + math.sqrt(var) * step_noise)
    # t = 0: no noise, and the mean is the x0 estimate itself.
    t0 = torch.tensor([0, 0])
    x_1 = d.q_sample(x0, t0, noise)
    torch.testing.assert_close(d.ddpm_step(x_1, t0, noise, noise=step_noise), x0)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("sampler, steps", [("ddim", 10), ("dpm++2m", 10), ("ddpm", None)])
def test_oracle_sampling_recovers_x0(prediction, sampler, steps):
    d = GaussianDiffusion("cosine", 50, prediction=prediction)
    x0 = make_x0()
    out = d.sample(oracle(d, x0), SHAPE, steps=steps, sampler=sampler,
                   generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)


def test_dpm_step_by_hand():
    """First order is DDIM's deterministic update; second order extrapolates x0 linearly in log-SNR time."""
    d = GaussianDiffusion("cosine", 50, prediction="v")
    x_t, x0, x0_last = randn(1, dtype=torch.float64), make_x0(2, dtype=torch.float64), make_x0(3, dtype=torch.float64)
    t, t_prev, t_last = (torch.full((SHAPE[0],), i) for i in (20, 10, 30))
    v = d.target(x0, t, (x_t - alpha_bar(d, t).sqrt() * x0) / (1 - alpha_bar(d, t)).sqrt())  # the v whose x0 is x0
    torch.testing.assert_close(d.dpm_step(x_t, t, t_prev, x0), d.ddim_step(x_t, t, t_prev, v, eta=0.0, clip_x0=False))
    a, a_p, a_l = (alpha_bar(d, s) for s in (t, t_prev, t_last))
    lam, lam_p, lam_l = (0.5 * torch.log(ab / (1 - ab)) for ab in (a, a_p, a_l))
    h, r = lam_p - lam, (lam - lam_l) / (lam_p - lam)
    want = ((1 - a_p) / (1 - a)).sqrt() * x_t - a_p.sqrt() * (torch.exp(-h) - 1) * (
        (1 + 1 / (2 * r)) * x0 - x0_last / (2 * r))
    torch.testing.assert_close(d.dpm_step(x_t, t, t_prev, x0, (x0_last, t_last)), want)
    t_end = torch.full_like(t, -1)  # the last step returns the x0 estimate, as DDIM's does
    torch.testing.assert_close(d.dpm_step(x_t, t, t_end, x0, (x0_last, t_last)), x0)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_dpm_solver_follows_the_ode_closer_than_ddim(schedule):
    """Gaussian data N(mu, s^2) has an exact denoiser and an exact probability-flow ODE: along it, the noisy sample's
    z-score under its own marginal N(alpha mu, alpha^2 s^2 + sigma^2) is constant. A second-order solver must land
    far nearer the ODE's end than first-order DDIM at the same steps (measured: 22x at 50 steps, 2.7x at 20)."""
    d = GaussianDiffusion(schedule, 50, prediction="v")
    mu, s = 0.3, 0.5
    ab = d.schedule.alphas_cumprod
    table = d.schedule.model_timesteps.float()

    def model_fn(x_t, model_time):
        a = ab[torch.searchsorted(table, model_time)].reshape(-1, 1)
        alpha, sigma = a.sqrt(), (1 - a).sqrt()
        x0 = mu + alpha * s * s / (a * s * s + 1 - a) * (x_t - alpha * mu)
        return alpha * (x_t - alpha * x0) / sigma - sigma * x0  # v

    x_T = randn(5, shape=(4096, 1)).double()
    exact = mu + s * (x_T - ab[-1].sqrt() * mu) / (ab[-1] * s * s + 1 - ab[-1]).sqrt()
    rms = {(sampler, steps): (d.sample(model_fn, (4096, 1), steps=steps, sampler=sampler, clip_x0=False,
                                       generator=torch.Generator().manual_seed(5)) - exact).pow(2).mean().sqrt().item()
           for sampler in ("ddim", "dpm++2m") for steps in (20, 50)}
    assert rms[("dpm++2m", 50)] < rms[("ddim", 50)] / 10 and rms[("dpm++2m", 50)] < 2e-3
    assert rms[("dpm++2m", 20)] < rms[("ddim", 20)] / 1.5


def test_sampling_timesteps():
    d = GaussianDiffusion("cosine", 50)
    ts = d.sampling_timesteps(10)
    assert len(ts) == 10 and ts[0] == 49 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    assert d.sampling_timesteps(1) == [49]
    assert d.sampling_timesteps(None, "ddpm") == list(range(49, -1, -1))


# d.sample(0.1 x, (2, 3, 4), seed 7)[0, 0] and the sum of the whole draw, printed once (torch 2 CPU). Values are in
# [-1, 1] (x0 is clipped) and come from elementwise steps, so 1e-5 leaves room for another CPU's randn/log/cos ulps.
PINNED_SAMPLES = {"ddim eta 0": ([-1.0, 1.0, 1.0, -1.0], -3.997253),
                  "ddim eta 1": ([-0.97254151, 0.93530411, 0.99626398, 0.94373202], -3.682540),
                  "ddpm": ([-0.97386909, 0.94961113, -1.0, -0.99643934], 1.396142)}


def test_sample_is_deterministic_per_seed():
    d = GaussianDiffusion("cosine", 50)
    model_fn = lambda x_t, model_time: 0.1 * x_t  # noqa: E731
    for i, (name, kwargs) in enumerate([("ddim eta 0", {"steps": 5}), ("ddim eta 1", {"steps": 5, "eta": 1.0}),
                                        ("ddpm", {"sampler": "ddpm"})]):
        torch.manual_seed(1000 + i)  # the draws come from the generator, whatever the global RNG holds
        a, c = (d.sample(model_fn, (2, 3, 4), generator=torch.Generator().manual_seed(s), **kwargs) for s in (7, 8))
        first, total = PINNED_SAMPLES[name]
        torch.testing.assert_close(a[0, 0], torch.tensor(first), rtol=0, atol=1e-5, msg=name)
        assert a.sum().item() == pytest.approx(total, abs=1e-4), name
        assert not torch.equal(a, c)


def test_per_sample_generators_make_each_sample_independent_of_its_batch():
    d = GaussianDiffusion("cosine", 50)
    model_fn = lambda x_t, model_time: 0.1 * x_t  # noqa: E731
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    for kwargs in ({"steps": 5}, {"sampler": "ddpm"}):
        both = d.sample(model_fn, (2, 3, 4), generator=gens(3, 4), **kwargs)
        alone = d.sample(model_fn, (1, 3, 4), generator=gens(4), **kwargs)
        single = d.sample(model_fn, (1, 3, 4), generator=torch.Generator().manual_seed(4), **kwargs)
        torch.testing.assert_close(both[1:], alone, rtol=0, atol=0)
        torch.testing.assert_close(alone, single, rtol=0, atol=0)  # one generator per row == that seed alone
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        d.sample(model_fn, (3, 4), generator=gens(1, 2))


def test_sample_rejects_bad_steps():
    d = GaussianDiffusion("cosine", 50)
    model_fn = lambda x_t, model_time: x_t  # noqa: E731
    with pytest.raises(ValueError, match="steps"):
        d.sample(model_fn, (1, 2), steps=51)
    with pytest.raises(ValueError, match="ddpm"):
        d.sample(model_fn, (1, 2), steps=10, sampler="ddpm")
    with pytest.raises(ValueError, match="ddim"):
        d.sample(model_fn, (1, 2), sampler="euler")


def test_bf16_model_output_keeps_float32_state():
    d = GaussianDiffusion("cosine", 50)
    out = d.sample(lambda x_t, model_time: (0.1 * x_t).bfloat16(), (2, 3), steps=3, eta=1.0,
                   generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sample_same_on_cpu_and_cuda():
    d = GaussianDiffusion("cosine", 50)
    model_fn = lambda x_t, model_time: 0.1 * x_t + 1e-4 * model_time.reshape(-1, 1)  # noqa: E731
    cpu, gpu = (d.sample(model_fn, (2, 3), steps=5, eta=1.0, generator=torch.Generator().manual_seed(0), device=dev)
                for dev in ("cpu", "cuda"))
    torch.testing.assert_close(gpu.cpu(), cpu)


def test_min_snr_weights_exact():
    from diffusion import GaussianDiffusion

    for prediction in ("eps", "v"):
        d = GaussianDiffusion("linear", 50, prediction, min_snr_gamma=5.0)
        snr = d.schedule.snr
        w = d._masters["loss_weight"]
        k = int((snr < 5).nonzero()[0])  # first step whose SNR is below the cap
        expected_high = 5.0 / (snr[k - 1] if prediction == "eps" else snr[k - 1] + 1)
        expected_low = 1.0 if prediction == "eps" else snr[k] / (snr[k] + 1)
        assert torch.isclose(w[k - 1], expected_high, rtol=1e-12)
        assert torch.isclose(w[k], torch.as_tensor(expected_low, dtype=w.dtype), rtol=1e-12)
    assert torch.equal(GaussianDiffusion("linear", 50, "v")._masters["loss_weight"], torch.ones(50, dtype=torch.float64))


def test_min_snr_loss_is_weighted_mse():
    from diffusion import GaussianDiffusion

    d = GaussianDiffusion("cosine", 50, "v", min_snr_gamma=5.0)
    x0 = torch.zeros(2, 3, 2, 4, 4)
    noise = torch.ones_like(x0)
    t = torch.tensor([0, 49])
    out = d.training_losses(lambda x, s: torch.zeros_like(x), x0, t, noise)
    target = d.target(x0, t, noise)
    mse = target.pow(2).flatten(1).mean(1)
    torch.testing.assert_close(out["mse_per_sample"], mse)
    snr = d.schedule.snr[t]
    torch.testing.assert_close(out["loss_per_sample"], (mse * (snr.clamp(max=5) / (snr + 1))).float())


def test_motion_weights_exact():
    # one clip, 1 channel, 2 frames, 1x2 pixels: pixel A still at 0, pixel B moves -1 -> 1
    x0 = torch.tensor([[[[[0.0, -1.0]], [[0.0, 1.0]]]]])  # (1, 1, 2, 1, 2)
    w = GaussianDiffusion.motion_weights(x0, strength=1.0)
    # distance from the temporal mean: A 0, B 1; relative to the clip's mean 0.5: A 0, B 2; 1 + rel: 1, 3; mean 2
    torch.testing.assert_close(w, torch.tensor([[[[[0.5, 1.5]], [[0.5, 1.5]]]]]), rtol=0, atol=1e-6)
    still = torch.full((2, 3, 4, 8, 8), 0.3)
    torch.testing.assert_close(GaussianDiffusion.motion_weights(still, 4.0), torch.ones(2, 1, 4, 8, 8))
    assert torch.allclose(GaussianDiffusion.motion_weights(make_x0(), 3.0).flatten(1).mean(1), torch.ones(2))
    # per-clip strengths: 0 leaves the clip uniform, 1 gives the numbers above
    w = GaussianDiffusion.motion_weights(torch.cat([x0, x0]), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(w[0], torch.ones(1, 2, 1, 2))
    torch.testing.assert_close(w[1], torch.tensor([[[[0.5, 1.5]], [[0.5, 1.5]]]]), rtol=0, atol=1e-6)


def test_motion_weighted_loss():
    d = GaussianDiffusion("cosine", 50, "v", motion_weight=2.0)
    x0, noise, t = make_x0(), randn(1), torch.tensor([3, 40])
    out = d.training_losses(lambda x, s: 0.5 * x, x0, t, noise)
    sq = (0.5 * out["x_t"] - out["target"]) ** 2
    torch.testing.assert_close(out["mse_per_sample"], sq.mean(dim=(1, 2, 3, 4)))  # logged MSE stays plain
    # the strength fades with the noise: 2 x (1 - ᾱ_t), 0.04 at t = 3 and 1.85 at t = 40
    strength = 2.0 * (1 - d.schedule.alphas_cumprod[t].float())
    assert strength[0] < 0.05 and strength[1] > 1.8
    weighted = (sq * GaussianDiffusion.motion_weights(x0, strength)).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(out["loss_per_sample"], weighted)
    assert not torch.allclose(weighted, out["mse_per_sample"])
    with pytest.raises(ValueError, match="motion_weight"):
        GaussianDiffusion("cosine", 50, motion_weight=-1)
    assert GaussianDiffusion.from_config(DiffusionConfig(motion_weight=2.0)).motion_weight == 2.0


def test_correlate_frames_exact_and_covariance():
    plain = GaussianDiffusion(timesteps=10)
    d = GaussianDiffusion(timesteps=10, frame_noise_correlation=0.5)
    # two frames, one pixel: a = sqrt(0.5), b = sqrt(1.5); frame 0 = a*e0 + (b - a)*(e0 + e1)/2
    e = torch.tensor([1.0, 3.0], dtype=torch.float64).view(1, 1, 2, 1, 1)
    a, b = math.sqrt(0.5), math.sqrt(1.5)
    out = d.correlate_frames(e).flatten().tolist()
    assert out == pytest.approx([a * 1 + (b - a) * 2, a * 3 + (b - a) * 2], abs=1e-12)
    torch.testing.assert_close(plain.correlate_frames(e), e)  # rho = 0: the same tensor, bit for bit
    # the covariance over a large draw: unit variance per pixel, rho between any two frames of a clip
    g = torch.Generator().manual_seed(0)
    x = d.correlate_frames(torch.randn(20000, 1, 4, 1, 1, generator=g, dtype=torch.float64)).view(-1, 4)
    cov = x.T @ x / x.shape[0]
    expected = torch.full((4, 4), 0.5, dtype=torch.float64) + 0.5 * torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(cov, expected, atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="frame_noise_correlation"):
        GaussianDiffusion(frame_noise_correlation=1.0)


def test_correlated_noise_reaches_loss_and_sampler():
    d = GaussianDiffusion(timesteps=10, prediction="v", frame_noise_correlation=0.75)
    x0 = torch.zeros(1, 1, 3, 2, 2)
    noise = torch.randn(1, 1, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([9])
    out = d.training_losses(lambda x, s: torch.zeros_like(x), x0, t, noise)
    torch.testing.assert_close(out["x_t"], d.q_sample(x0, t, d.correlate_frames(noise)))
    # the sampler's start noise is the correlated transform of the generator's draw
    seen = []
    d.sample(lambda x, s: seen.append(x.clone()) or torch.zeros_like(x), (1, 1, 3, 2, 2), steps=1,
             generator=torch.Generator().manual_seed(2))
    start = d.correlate_frames(torch.randn(1, 1, 3, 2, 2, generator=torch.Generator().manual_seed(2)))
    torch.testing.assert_close(seen[0], start)


def test_the_samplers_rho_can_differ_from_trainings():
    d = GaussianDiffusion.from_config(DiffusionConfig(timesteps=10, frame_noise_correlation=0.5,
                                                      sample_noise_correlation=0.9))
    assert d.frame_noise_correlation == 0.5  # the sampler's rho is a sampling setting (SamplingSettings)
    seen = []
    d.sample(lambda x, s: seen.append(x.clone()) or torch.zeros_like(x), (1, 1, 2, 1, 1), steps=1,
             generator=torch.Generator().manual_seed(2), noise_correlation=0.9)
    e = torch.randn(1, 1, 2, 1, 1, generator=torch.Generator().manual_seed(2))
    a, b = math.sqrt(0.1), math.sqrt(1.9)  # rho 0.9 over 2 frames
    expected = a * e + (b - a) * e.mean(dim=2, keepdim=True)
    torch.testing.assert_close(seen[0], expected)
    with pytest.raises(ValueError, match=r"noise_correlation must be in \[0, 1\)"):
        d.sample(lambda x, s: torch.zeros_like(x), (1, 1, 2, 1, 1), steps=1, noise_correlation=1.0)
