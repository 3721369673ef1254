"""VideoDiT: zero-initialised temporal/cross attention leave the frame-wise image DiT unchanged; text matters."""
import pytest
import torch

from models import build_model
from tolerance import assert_close_scaled
from models.video_dit import DiT_models
from models.blocks import DiTBlock

TEXT_DIM = 24


def randomized_model(**kwargs):
    """A test-size model with every parameter random except the zero-initialised added projections."""
    torch.manual_seed(0)
    model = build_model("DiT-Test/4", 16, TEXT_DIM, **kwargs)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not (".temporal_attn.proj." in name or ".cross_attn.proj." in name):
                p.normal_(0, 0.3)
    return model.eval()


def inputs(B=2, T=5, L=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, T, 16, 16, generator=g)
    t = torch.tensor([10.0, 900.0][:B])
    tokens = torch.randn(B, L, TEXT_DIM, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, -1] = False
    pooled = torch.randn(B, TEXT_DIM, generator=g)
    return x, t, tokens, mask, pooled


def image_dit_reference(model, frame, t, pooled):
    """The plain image DiT path (DiTBlock.forward, no temporal/cross attention) for one frame (B, C, H, W)."""
    h = model.x_embedder(frame) + model.pos_embed
    c = model.t_embedder(t) + model.text_embedder.proj(pooled)
    for block in model.blocks:
        h = DiTBlock.forward(block, h, c)
    return model.unpatchify(model.final_layer(h, c))


def test_zero_init_added_attention_equals_framewise_image_dit():
    model = randomized_model()
    x, t, tokens, mask, pooled = inputs()
    with torch.no_grad():
        out = model(x, t, tokens, mask, pooled)
        for f in range(x.shape[2]):
            ref = image_dit_reference(model, x[:, :, f], t, pooled)
            assert_close_scaled(out[:, :, f], ref, terms=128, label=f"frame {f}")  # 128: the MLP's inner width
    assert out.abs().mean() > 0.1  # the comparison is not between two zero tensors


def test_initialize_weights_zeroes_added_projections_and_output():
    model = build_model("DiT-Test/4", 16, TEXT_DIM)
    for block in model.blocks:
        assert block.temporal_attn.proj.weight.abs().sum() == 0
        assert block.cross_attn.proj.weight.abs().sum() == 0
    x, t, tokens, mask, pooled = inputs()
    assert model(x, t, tokens, mask, pooled).abs().max() == 0  # adaLN-Zero: identity blocks, zero final layer


def test_temporal_attention_mixes_frames_once_trained():
    model = randomized_model()
    x, t, tokens, mask, pooled = inputs()
    x2 = x.clone()
    x2[:, :, 3] += 1.0
    with torch.no_grad():
        same = (model(x, t, tokens, mask, pooled) - model(x2, t, tokens, mask, pooled))[:, :, 0].abs().max()
        for block in model.blocks:
            block.temporal_attn.proj.weight.normal_(0, 0.3)
        diff = (model(x, t, tokens, mask, pooled) - model(x2, t, tokens, mask, pooled))[:, :, 0].abs().max()
    assert same == 0
    assert diff > 1e-3


def test_text_tokens_condition_through_cross_attention():
    model = randomized_model()
    x, t, tokens, mask, pooled = inputs()
    other = tokens.flip(1)
    with torch.no_grad():
        assert torch.equal(model(x, t, tokens, mask, pooled), model(x, t, other, mask, pooled))
        for block in model.blocks:
            block.cross_attn.proj.weight.normal_(0, 0.3)
        base = model(x, t, tokens, mask, pooled)
        delta = (base - model(x, t, other, mask, pooled)).abs().max()
        # A masked-out (padding) token must not matter.
        padded = tokens.clone()
        padded[0, -1] = 100.0
        with_pad = model(x, t, padded, mask, pooled)
    assert delta > 1e-3
    assert_close_scaled(with_pad[0], base[0], terms=128, label="padding token")


def test_pooled_text_conditions_adaln():
    model = randomized_model()
    x, t, tokens, mask, pooled = inputs()
    with torch.no_grad():
        delta = (model(x, t, tokens, mask, pooled) - model(x, t, tokens, mask, pooled + 1.0)).abs().max()
    assert delta > 1e-3


def test_caption_dropout_uses_null_embedding():
    model = randomized_model()
    for block in model.blocks:
        torch.nn.init.normal_(block.cross_attn.proj.weight, 0, 0.3)
    x, t, tokens, mask, pooled = inputs()
    drop = torch.tensor([True, False])
    with torch.no_grad():
        a = model(x, t, tokens, mask, pooled, drop=drop)
        b = model(x, t, tokens * 3, mask, pooled * 3, drop=drop)
    assert_close_scaled(a[0], b[0], terms=128)  # dropped caption: independent of the text
    assert (a[1] - b[1]).abs().max() > 1e-3


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_frame_chunking_and_checkpointing_do_not_change_results(chunk):
    x, t, tokens, mask, pooled = inputs()
    ref_model = randomized_model(frame_chunk_size=8)
    for block in ref_model.blocks:
        torch.nn.init.normal_(block.temporal_attn.proj.weight, 0, 0.3)
        torch.nn.init.normal_(block.cross_attn.proj.weight, 0, 0.3)
    model = randomized_model(frame_chunk_size=chunk, grad_checkpointing=True)
    model.load_state_dict(ref_model.state_dict())
    ref_model.train()
    model.train()
    ref = ref_model(x, t, tokens, mask, pooled)
    out = model(x, t, tokens, mask, pooled)
    assert_close_scaled(out, ref, terms=128, label="output")  # 128: the MLP's inner width
    ref.square().mean().backward()
    out.square().mean().backward()
    for (name, p), q in zip(ref_model.named_parameters(), model.parameters()):
        if p.grad is None:  # a parameter the forward pass does not use (e.g. unused option weights)
            assert q.grad is None, name
            continue
        # a weight's gradient sums over every token of the batch: B x T x (16/4)^2 = 160 terms, so 8 x sqrt(160)
        # = 101 x eps * max|grad| is allowed. Worst measured (2-core x86 CPU; OMP_NUM_THREADS 1 and 2, and with
        # denormals flushed): 3.8e-6 on t_embedder.mlp.0.weight (max 18.6) = 1.7 x eps * max, and 3.3 x on
        # blocks.1.cross_attn.q.weight; the output was bit-equal. The old atol 1e-6 failed at 1.9e-6 on another CPU.
        assert_close_scaled(q.grad, p.grad, terms=160, label=name)


def test_presets_have_valid_shapes():
    for name, spec in DiT_models.items():
        assert spec["hidden_size"] % spec["num_heads"] == 0, name
    assert DiT_models["TinyDiT-D14/2"] == dict(depth=14, hidden_size=1152, patch_size=2, num_heads=16)
