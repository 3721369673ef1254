"""Every architecture of the registry at its Test size: the one interface, text and caption dropout, gradients to every
parameter, each design's zero-init identities, exact resume, train -> sample through the CLI, pinned sizes."""
import os

import pytest
import torch

from config import ConfigError
from conftest import in_process, run, sets, tiny_overrides
from methods.checkpoint import load_checkpoint
from methods.run_config import load_config
from methods.training.trainer import Trainer
from models import MODELS, build_model
from models.dit3d import DiT3DBlock
from models.unet3d import AttnBlock, ResBlock
from models.vivit import TemporalBlock
from tolerance import assert_close_scaled
from utils.errors import UserError

TEXT_DIM = 12
TEST_SIZES = ["DiT-Test/4", "UNet3D-Test", "ViT3D-Test/2x4", "DiT3D-Test/2x4", "ViViT-Test/4"]


def inputs(B=2, T=4, S=16, L=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, T, S, S, generator=g)
    t = torch.tensor([10.0, 900.0][:B])
    tokens = torch.randn(B, L, TEXT_DIM, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, -2:] = False
    return x, t, tokens, mask, torch.randn(B, TEXT_DIM, generator=g)


def randomized(arch, **kwargs):
    torch.manual_seed(0)
    model = build_model(arch, 16, TEXT_DIM, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize("arch", TEST_SIZES)
def test_shape_and_zero_output_at_init(arch):
    torch.manual_seed(0)
    model = build_model(arch, 16, TEXT_DIM)
    x, *rest = inputs()
    out = model(x, *rest)
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # every design zero-initialises its output layer


@pytest.mark.parametrize("arch", TEST_SIZES)
def test_text_matters_and_dropout_is_the_null_caption(arch):
    model = randomized(arch)
    x, t, tokens, mask, pooled = inputs()
    with torch.no_grad():
        base = model(x, t, tokens, mask, pooled)
        other_pooled = model(x, t, tokens, mask, pooled.flip(0))
        other_tokens = model(x, t, tokens.flip(1), mask, pooled)
        drop = torch.tensor([True, False])
        dropped = model(x, t, tokens, mask, pooled, drop)
        dropped_other = model(x, t, tokens * 3, mask, pooled * 3, drop)
    assert (base - other_pooled).abs().max() > 1e-3
    assert (base - other_tokens).abs().max() > 1e-3  # the token path (cross-attention) is wired
    assert torch.equal(dropped[0], dropped_other[0])  # a dropped caption is ignored entirely
    assert (dropped[0] - base[0]).abs().max() > 1e-3
    assert_close_scaled(dropped[1], base[1], terms=128)  # the other sample keeps its caption (128: MLP width)


@pytest.mark.parametrize("arch", TEST_SIZES)
def test_gradients_reach_every_parameter(arch):
    model = randomized(arch).train()
    x, t, tokens, mask, pooled = inputs()
    model(x, t, tokens, mask, pooled, torch.tensor([True, False])).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("arch", ["UNet3D-Test", "ViT3D-Test/2x4"])
def test_design_options_remove_their_paths(arch):
    """cross_attention=False leaves the pooled caption only (token order no longer matters); UNet3D can drop its
    temporal attention (its temporal convolutions remain)."""
    torch.manual_seed(0)
    model = randomized(arch, cross_attention=False)
    x, t, tokens, mask, pooled = inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, tokens, mask, pooled), model(x, t, tokens.flip(1), mask, pooled))
    gone = ".cross_attn." if arch.startswith("UNet3D") else "token_proj"  # ViT3D keeps it for t and pooled text
    assert not any(gone in n for n, _ in model.named_parameters())
    if arch.startswith("UNet3D"):
        plain = build_model(arch, 16, TEXT_DIM, temporal_attention=False)
        assert not any(".temporal_attn." in n for n, _ in plain.named_parameters())
        assert any(".temporal_conv." in n for n, _ in plain.named_parameters())


def identity_blocks(model, kinds) -> list[str]:
    """Names of the blocks of the given kinds whose output differed from their input in one forward pass."""
    changed, hooks = [], []
    for name, module in model.named_modules():
        if isinstance(module, kinds) and not (isinstance(module, ResBlock) and not isinstance(module.skip,
                                                                                               torch.nn.Identity)):
            hooks.append(module.register_forward_hook(
                lambda m, args, out, name=name: changed.append(name) if not torch.equal(args[0], out) else None))
    model(*inputs())
    for h in hooks:
        h.remove()
    return changed


@pytest.mark.parametrize("arch, kinds, zeroed", [
    ("UNet3D-Test", (ResBlock, AttnBlock), "attn.proj"), ("DiT3D-Test/2x4", (DiT3DBlock,), "adaLN_modulation.1"),
    ("ViViT-Test/4", (TemporalBlock,), "adaLN_modulation.1"),
])
def test_residual_blocks_are_identities_at_init(arch, kinds, zeroed):
    torch.manual_seed(0)
    model = build_model(arch, 16, TEXT_DIM)
    n = sum(isinstance(m, kinds) for m in model.modules())
    assert n >= 1 and identity_blocks(model, kinds) == []
    with torch.no_grad():  # the check can fail: the zero-initialised gate / projection made non-zero breaks it
        block = next(m for m in model.modules() if isinstance(m, kinds[-1]))
        block.get_submodule(zeroed).bias.normal_()
    assert identity_blocks(model, kinds) != []


def test_vit3d_ignores_its_context_at_init():
    """ViT3D's condition enters only through cross-attention, whose output projections start at zero."""
    torch.manual_seed(0)
    model = build_model("ViT3D-Test/2x4", 16, TEXT_DIM)
    with torch.no_grad():
        model.final_linear.weight.normal_()
        x, t, tokens, mask, pooled = inputs()
        a = model(x, t, tokens, mask, pooled)
        b = model(x, t.flip(0), tokens * 2, mask, -pooled)
        assert torch.equal(a, b) and a.abs().max() > 0
        model.blocks[0].cross_attn.proj.weight.normal_()
        assert not torch.equal(model(x, t, tokens, mask, pooled), model(x, t.flip(0), tokens * 2, mask, -pooled))


def test_vivit_starts_from_a_hugging_face_vit_exactly(tmp_path):
    from transformers import ViTConfig, ViTModel

    from models.vit_init import load_vit

    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=128,
                             image_size=16, patch_size=4), add_pooling_layer=False).eval()
    vit.save_pretrained(tmp_path / "vit")
    model = build_model("ViViT-Test/4", 16, TEXT_DIM).eval()
    report = load_vit(model, str(tmp_path / "vit"))
    assert "into the per-frame encoder, its last 1 layers unused" in report
    x, t, tokens, mask, pooled = inputs()
    frames = x.transpose(1, 2).reshape(-1, 3, 16, 16)  # (B*T, C, H, W)
    with torch.no_grad():
        theirs = vit(frames, output_hidden_states=True).hidden_states[2]  # after the 2 layers ViViT-Test has
        h = model.encode_frames(frames).view(2, 4, 17, 32)
        c = model.t_embedder(t) + model.text_embedder.proj(pooled)
        pos = torch.zeros(4, 32)
        for block in model.spatial_blocks:
            h = block(h, c, pos, tokens, mask, None)
    assert_close_scaled(h.reshape(8, 17, 32), theirs, terms=128)  # 128: the MLP's inner width

    vit_b = ViTModel(ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=192,
                               image_size=16, patch_size=4), add_pooling_layer=False)
    vit_b.save_pretrained(tmp_path / "wide")
    with pytest.raises(UserError, match=r"model.vit_init='.*wide' does not fit ViViT with spatial depth 2: "
                                        r"hidden_size=48 \(ViViT needs 32\)"):
        load_vit(model, str(tmp_path / "wide"))


def test_arch_names_and_field_rules_are_one_line_errors(tmp_path):
    r = run("config", "--set", "model.arch=UNet3D-Tiny", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert all(name in r.stderr for name in MODELS)
    r = in_process("config", "--set", "model.arch=ViT3D-Demo/2x4", "--set", "model.temporal_attention=false",
                   cwd=tmp_path)
    assert r.returncode == 2 and "model.temporal_attention=False does not apply to model.arch=ViT3D-Demo/2x4 " \
                                  "(ViT3D); it applies to UNet3D, VideoDiT" in r.stderr
    r = in_process("config", "--set", "model.arch=DiT3D-Demo/2x4", "--set", "data.num_frames=7", cwd=tmp_path)
    assert r.returncode == 2 and "data.num_frames=7 must be a multiple of 2 for model.arch=DiT3D-Demo/2x4" in r.stderr
    with pytest.raises(ConfigError, match="model.pretrained='x.pt' does not apply to model.arch=UNet3D-Demo"):
        load_config("demo", ["model.arch=UNet3D-Demo", "model.pretrained=x.pt"])


@pytest.mark.parametrize("arch", TEST_SIZES[1:])
def test_resume_is_bit_exact(tiny_config, arch):
    def train(name, stop_at=None, resume=None):
        trainer = Trainer(tiny_config(**{"model.arch": arch, "train.exp_name": name, "train.max_steps": 4}),
                          resume=resume, quiet=True)
        return trainer, trainer.train(stop_at=stop_at)

    full, full_losses = train("full")
    first, first_losses = train("split", stop_at=2)
    second, second_losses = train("split", resume=load_checkpoint(os.path.join(first.exp_dir, "latest.pt")))
    assert first_losses + second_losses == full_losses
    a = load_checkpoint(os.path.join(full.exp_dir, "final.pt"))
    b = load_checkpoint(os.path.join(second.exp_dir, "final.pt"))
    for key in ("model", "ema"):
        assert all(torch.equal(v, b[key][k]) for k, v in a[key].items()), key


@pytest.mark.parametrize("arch", TEST_SIZES[1:])
def test_train_then_sample_through_the_cli(tmp_path, synth_dir, tiny_encoder, arch):
    overrides = tiny_overrides(tmp_path, synth_dir, tiny_encoder, **{"model.arch": arch, "train.max_steps": 2})
    r = run("train", *sets(overrides), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = tmp_path / "checkpoints" / "tiny" / "final.pt"
    r = in_process("sample", "--checkpoint", str(ckpt), "--text", "hello", "--steps", "2", "--output_dir",
                   str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [p.suffix for p in (tmp_path / "out").iterdir()] == [".gif"]


def count_transformer(D, E, mlp=4):
    """Independent counts of the shared pieces (weights + biases), by formula."""
    attn = 3 * D * D + 3 * D + D * D + D
    cross = lambda ctx: D * D + D + ctx * 2 * D + 2 * D + D * D + D  # noqa: E731
    return dict(attn=attn, mlp=2 * mlp * D * D + mlp * D + D, cross=cross, t=256 * D + D + D * D + D,
                text=E * D + D + D * D + D + 2 * E, ada=lambda n: D * n * D + n * D)


def expected_params(arch: str, E: int, size: int) -> int:
    family, s = MODELS[arch]
    C = 3
    if family.__name__ in ("DiT3D", "ViT3D"):
        D, tp = s["hidden_size"], s["tubelet"] * s["patch_size"] ** 2 * C
        k = count_transformer(D, E)
        base = D * tp + D + k["t"] + k["text"]
        if family.__name__ == "DiT3D":
            block = k["attn"] + k["mlp"] + k["ada"](6) + k["cross"](E)
            return base + s["depth"] * block + k["ada"](2) + D * tp + tp
        block = 3 * 2 * D + k["attn"] + k["mlp"] + k["cross"](D)
        return base + E * D + D + s["depth"] * block + 2 * D + D * tp + tp
    if family.__name__ == "ViViT":
        D, pp = s["hidden_size"], s["patch_size"] ** 2 * C
        k = count_transformer(D, E)
        n = (size // s["patch_size"]) ** 2
        spatial = 4 * D + k["attn"] + k["mlp"] + k["ada"](4) + k["cross"](E)
        temporal = k["attn"] + k["mlp"] + k["ada"](6) + k["cross"](E)
        return (D * pp + D + D + (1 + n) * D + k["t"] + k["text"] + s["spatial_depth"] * spatial
                + s["temporal_depth"] * temporal + k["ada"](2) + D * pp + pp)
    # UNet3D: conv k x k = k*k*in*out + out, GroupNorm 2C, FiLM cond -> 2C, temporal conv 3*C*C + C
    ch, u, heads = s["channels"], s["unshuffle"], s["num_heads"]
    cond = 4 * ch[0]
    res = lambda i, o: (2 * i + 9 * i * o + o + cond * 2 * o + 2 * o + 2 * o + 9 * o * o + o  # noqa: E731
                        + (i * o + o if i != o else 0) + 2 * o + 3 * o * o + o)
    attn = lambda c: 2 * (4 * c * c + 4 * c) + (c * c + c + E * 2 * c + 2 * c + c * c + c)  # noqa: E731
    del heads
    total = 256 * cond + cond + cond * cond + cond + E * cond + cond + cond * cond + cond + 2 * E
    total += 9 * C * u * u * ch[0] + ch[0]
    c, skips = ch[0], []
    for level, o in enumerate(ch):
        for _ in range(s["num_blocks"]):
            total += res(c, o) + (attn(o) if level in s["attn_levels"] else 0)
            c = o
        skips.append(c)
        if level < len(ch) - 1:
            total += 9 * c * c + c
    total += 2 * res(c, c) + attn(c)
    for level in reversed(range(len(ch))):
        for i in range(s["num_blocks"]):
            total += res(c + (skips[level] if i == 0 else 0), ch[level]) + (attn(ch[level]) if level in
                                                                             s["attn_levels"] else 0)
            c = ch[level]
        if level > 0:
            total += 9 * c * ch[level - 1] + ch[level - 1]
            c = ch[level - 1]
    return total + 2 * c + 9 * c * C * u * u + C * u * u


@pytest.mark.parametrize("arch", [a for a in MODELS if not MODELS[a][0].__name__ == "VideoDiT"])
def test_parameter_counts_match_an_independent_count(arch):
    size = 64 if arch.split("-")[1][0] in "BS" else 32
    with torch.device("meta"):
        model = build_model(arch, size, 384)
    assert sum(p.numel() for p in model.parameters()) == expected_params(arch, 384, size)


def test_named_sizes_are_pinned():
    counts = {}
    for arch in ["UNet3D-Demo", "ViT3D-Demo/2x4", "DiT3D-Demo/2x4", "ViViT-Demo/4"]:
        with torch.device("meta"):
            counts[arch] = sum(p.numel() for p in build_model(arch, 32, 384).parameters())
    assert counts == {"UNet3D-Demo": 3255820, "ViT3D-Demo/2x4": 1777760, "DiT3D-Demo/2x4": 1887456,
                      "ViViT-Demo/4": 2610352}


def test_alignment_prior_numbers_and_effect():
    from models.blocks import TextCrossAttention, alignment_prior

    mask = torch.tensor([[True, True, False]])
    prior = alignment_prior(4, mask)  # u = 1/8, 3/8, 5/8, 7/8; v = 1/4, 3/4 (2 real tokens)
    assert prior.shape == (1, 4, 3)
    assert prior[0, 0, 0].item() == pytest.approx(-18 * (1 / 8 - 1 / 4) ** 2)
    assert prior[0, 3, 1].item() == pytest.approx(-18 * (7 / 8 - 3 / 4) ** 2)
    # a content-free cross-attention (zero queries and keys) whose values are the token index one-hots: each
    # frame's output is its attention over the tokens, which the prior alone decides
    attn = TextCrossAttention(4, 3, 1, aligned=True)
    with torch.no_grad():
        for p in attn.parameters():
            p.zero_()
        attn.align_gain.fill_(1.0)
        attn.kv.weight[4:7, :3] = torch.eye(3)
        attn.proj.weight[:3, :3] = torch.eye(3)
        out = attn(torch.randn(1, 4, 2, 4), torch.zeros(4, 4), torch.eye(3)[None], mask, prior)  # (1, T, N, 4)
    weights = out[0, :, 0, :3]  # (T, tokens)
    assert weights.argmax(dim=1).tolist() == [0, 0, 1, 1]
    assert torch.all(weights[:, 2] == 0)  # the padded token is never read
    expected = torch.softmax(prior[0, :, :2], dim=1)
    torch.testing.assert_close(weights[:, :2], expected)


@pytest.mark.parametrize("arch", TEST_SIZES)
def test_text_alignment_option(arch):
    torch.manual_seed(0)
    plain = build_model(arch, 16, TEXT_DIM)
    torch.manual_seed(0)
    aligned = build_model(arch, 16, TEXT_DIM, text_alignment=True)
    gains = [n for n, _ in aligned.named_parameters() if n.endswith("align_gain")]
    assert gains and set(aligned.state_dict()) - set(plain.state_dict()) == set(gains)
    aligned.load_state_dict(randomized(arch).state_dict(), strict=False)
    x, t, tokens, mask, pooled = inputs()
    with torch.no_grad():
        a = aligned(x, t, tokens, mask, pooled)
        for n, p in aligned.named_parameters():
            if n.endswith("align_gain"):
                p.zero_()  # gain 0: exactly the unaligned model
        assert_close_scaled(aligned(x, t, tokens, mask, pooled), randomized(arch)(x, t, tokens, mask, pooled),
                            terms=128)
    assert (a - aligned(x, t, tokens, mask, pooled)).abs().max() > 1e-4


@pytest.mark.parametrize("arch", TEST_SIZES[1:])
def test_grad_checkpointing_gives_the_same_output_and_gradients(arch):
    x, t, tokens, mask, pooled = inputs()
    grads = []
    for ckpt in (False, True):
        model = randomized(arch, grad_checkpointing=ckpt).train()
        out = model(x, t, tokens, mask, pooled)
        out.square().mean().backward()
        grads.append((out.detach(), [(n, p.grad) for n, p in model.named_parameters()]))
    assert_close_scaled(grads[1][0], grads[0][0], terms=128, label="output")
    for (name, a), (_, b) in zip(grads[0][1], grads[1][1]):
        if a is None:
            assert b is None, name
            continue
        # a weight's gradient sums over every position of the batch: 2 x 4 x 16 x 16 pixels at most
        assert_close_scaled(b, a, terms=2048, label=name)
