"""Pretrained TinyDiT loading: rules, report, adapters (exact numbers), sources, failures, parameter counts."""
import argparse
import math
import os
import re
import urllib.error

import pytest
import torch

import main
from conftest import dit_pos_embed, sets, tiny_overrides, tinyfusion_state_dict
from methods.run_config import load_config
from models import build_model, build_video_model
from models.video_dit import DiT_models
from models.pretrained import (NEW, RELEASE_FILE, abbreviate, adapt_final_linear, adapt_patch_embed, load_pretrained,
                               load_state_dict_into)
from tolerance import assert_close_scaled
from utils.errors import UserError

TEXT_DIM = 24
ARCH = "DiT-Test/4"  # depth 2, hidden 32, patch 4: file and model share these
TINYFUSION_PARAMS = 340_457_504


def tiny_model(image_size=16, **kwargs):
    torch.manual_seed(0)
    return build_model(ARCH, image_size, TEXT_DIM, **kwargs)


EXPECTED_COUNTS = {"exact": 4 + 1 + 2 * 10 + 2, "adapted": 3, "recomputed": 1, "unused": 1, "new": 6 + 2 * 10}


@pytest.mark.parametrize("wrapping", ["ema+model", "bare", "model"])
def test_release_formats_load_exactly(tmp_path, wrapping):
    ema, raw = tinyfusion_state_dict(seed=1), tinyfusion_state_dict(seed=2)
    obj = {"ema+model": {"model": raw, "ema": ema}, "bare": ema, "model": {"model": ema}}[wrapping]
    path = tmp_path / RELEASE_FILE
    torch.save(obj, path)
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained(model, str(path))

    assert report.counts == EXPECTED_COUNTS
    assert report.file_tensors == len(ema) == 32
    assert report.container.split(";")[0].split(" ")[0] == {"ema+model": "ema", "bare": "bare",
                                                            "model": "model"}[wrapping]
    state = model.state_dict()
    for key in report.exact:  # bit for bit, from "ema" when both exist
        assert torch.equal(state[key], ema[key]), key
    for key in report.new:  # added modules keep their initialisation
        assert torch.equal(state[key], before[key]), key
    assert [k for k, _ in report.unused] == ["y_embedder.embedding_table.weight"]
    assert report.values["unused"] == 1001 * 32
    # the fixed grid is recomputed for the model's 4x4 grid (the file's is 2x2), matching DiT's own numpy code
    assert torch.equal(model.pos_embed[0], torch.from_numpy(dit_pos_embed(32, 4)))
    text = str(report)
    assert "loaded exactly        27 tensors" in text and "blocks.{0..1}.attn.qkv.{weight,bias}" in text
    assert "x_embedder.proj.weight (32, 4, 4, 4) -> (32, 3, 4, 4): rgb_from_latent" in text
    assert "blocks.{0..1}.cross_attn.{q,kv,proj}" not in text  # grouped per module, weight and bias together
    assert "blocks.{0..1}.cross_attn.q.{weight,bias}" in text


def test_pos_embed_formula_matches_dit_reference():
    from models.blocks import sincos_2d

    for dim, grid in [(1152, 16), (1152, 32), (32, 3)]:
        assert (sincos_2d(dim, grid) - torch.from_numpy(dit_pos_embed(dim, grid))).abs().max() < 1e-6


def test_patch_embed_rule_exact_numbers():
    w = torch.tensor([1.0, 2.0, 3.0, 6.0]).view(1, 4, 1, 1)  # one hidden unit, 1x1 patch, 4 latent filters
    assert adapt_patch_embed(w, 3).flatten().tolist() == [4.0, 4.0, 4.0]  # (1+2+3+6)/3 = mean 3 x 4/3
    # a grey input g gives the pretrained response to a latent whose 4 channels all equal g, for any filters
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 4, 2, 2, generator=g)
    grey = torch.rand(2, 1, 6, 6, generator=g).expand(-1, 3, -1, -1)
    latent = grey[:, :1].expand(-1, 4, -1, -1)
    assert_close_scaled(torch.nn.functional.conv2d(grey, adapt_patch_embed(w, 3), stride=2),
                        torch.nn.functional.conv2d(latent, w, stride=2), terms=16)  # 4 channels x 2 x 2


def test_final_layer_rule_exact_numbers():
    p, hidden = 2, 1
    rows = torch.tensor([[10.0 * pos + c] for pos in range(p * p) for c in range(8)])  # (p*p*8, 1)
    out = adapt_final_linear(rows, p, latent_channels=4, out_channels=3)
    # position pos: epsilon rows 10*pos + 0..3 -> mean 10*pos + 1.5 for each of the 3 outputs; sigma rows dropped
    assert out.flatten().tolist() == [10.0 * pos + 1.5 for pos in range(p * p) for _ in range(3)]
    bias = torch.arange(32.0)
    assert adapt_final_linear(bias, p, 4, 3).tolist() == [8 * pos + 1.5 for pos in range(4) for _ in range(3)]
    assert out.shape == (p * p * 3, hidden)


def test_adapted_model_reproduces_pretrained_grey_response():
    """End to end through the model's own layers: loaded weights give the file's response, channel-averaged."""
    sd = tinyfusion_state_dict()
    model = tiny_model()
    load_state_dict_into(model, sd)
    g = torch.Generator().manual_seed(0)
    grey = torch.rand(1, 1, 16, 16, generator=g)
    with torch.no_grad():
        tokens = model.x_embedder(grey.expand(-1, 3, -1, -1))
    reference = torch.nn.functional.conv2d(grey.expand(-1, 4, -1, -1), sd["x_embedder.proj.weight"],
                                           sd["x_embedder.proj.bias"], stride=4).flatten(2).transpose(1, 2)
    assert_close_scaled(tokens, reference, terms=64)  # 4 channels x 4 x 4
    h = torch.randn(1, 16, 32, generator=g)
    ours = model.unpatchify(torch.nn.functional.linear(h, model.final_layer.linear.weight,
                                                       model.final_layer.linear.bias))  # (1, 3, 16, 16)
    theirs = torch.nn.functional.linear(h, sd["final_layer.linear.weight"], sd["final_layer.linear.bias"])
    theirs = theirs.view(1, 4, 4, 4, 4, 8)[..., :4].mean(-1)  # (n, h, w, p, q) epsilon mean, DiT's layout
    theirs = torch.einsum("nhwpq->nhpwq", theirs).reshape(1, 16, 16)
    for c in range(3):
        assert_close_scaled(ours[0, c].detach(), theirs[0], terms=32, label=f"channel {c}")  # hidden 32


def _fails(model, sd, *needles):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError) as err:
        load_state_dict_into(model, sd, "f.pt")
    message = str(err.value)
    assert "\n" not in message and all(n in message for n in needles), message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


def test_mismatches_and_unknown_keys_fail_naming_them():
    model = tiny_model()
    wide = tinyfusion_state_dict(hidden=48)
    _fails(model, wide, "shape mismatch for 30 tensor(s)", "pos_embed file (1, 4, 48) vs model (1, 16, 32)",
           "x_embedder.proj.weight file (48, 4, 4, 4) vs model (32, 3, 4, 4) (rule rgb_from_latent does not apply)")
    sd = tinyfusion_state_dict()
    sd["blocks.0.attn.qkv.weight"] = sd["blocks.0.attn.qkv.weight"][:, :16]
    _fails(model, sd, "blocks.0.attn.qkv.weight file (96, 16) vs model (96, 32)")
    _fails(model, {**tinyfusion_state_dict(), "blocks.0.attn.q_norm.weight": torch.ones(32)},
           "match no loading rule", "blocks.0.attn.q_norm.weight")
    _fails(model, tinyfusion_state_dict(depth=3), "not in the model", "blocks.2.attn.qkv.weight")
    _fails(model, tinyfusion_state_dict(depth=1), "no value for 10 backbone", "blocks.1.attn.qkv.weight")
    learned = tinyfusion_state_dict()
    learned["pos_embed"] = torch.randn_like(learned["pos_embed"])
    _fails(model, learned, "pos_embed is not DiT's fixed 2D sin-cos table")
    odd = tinyfusion_state_dict()
    odd["final_layer.linear.weight"], odd["final_layer.linear.bias"] = torch.randn(80, 32), torch.randn(80)
    _fails(model, odd, "final_layer.linear.weight file (80, 32) vs model (48, 32) (rule eps_mean does not apply)")


def test_abbreviate_groups_block_ranges():
    names = [f"blocks.{i}.attn.qkv.{w}" for i in range(14) for w in ("weight", "bias")] + ["pos_embed"]
    names += ["blocks.0.mlp.fc1.weight", "blocks.2.mlp.fc1.weight", "blocks.3.mlp.fc1.weight"]
    assert abbreviate(names) == ["blocks.{0..13}.attn.qkv.{weight,bias}", "pos_embed", "blocks.{0,2..3}.mlp.fc1.weight"]


class NotAllowed:
    """A pickled class: weights_only loading must refuse it."""


def test_sources_and_file_contents(tmp_path, monkeypatch):
    sd = tinyfusion_state_dict()
    folder = tmp_path / "pretrained"
    folder.mkdir()
    with pytest.raises(UserError, match="no .pt file in the folder .*put it in pretrained/"):
        load_pretrained(tiny_model(), str(folder))
    torch.save({"ema": sd, "opt": {"state": {}}, "args": argparse.Namespace(model="DiT-D14/2")},
               folder / RELEASE_FILE)
    torch.save({}, folder / "other.pt")
    report = load_pretrained(tiny_model(), str(folder))  # the *TinyDiT* file is chosen
    assert report.path.endswith(RELEASE_FILE) and report.counts == EXPECTED_COUNTS
    assert "argparse.Namespace" in report.notes[0]
    torch.save({}, folder / "TinyDiT-D7.pt")
    with pytest.raises(UserError, match="holds several checkpoints .*set model.pretrained to one"):
        load_pretrained(tiny_model(), str(folder))

    with pytest.raises(UserError, match=r"pretrained file not found: nowhere\.pt; download .*releases/download"):
        load_pretrained(tiny_model(), "nowhere.pt")
    torch.save({"ema": sd, "x": NotAllowed()}, tmp_path / "code.pt")
    with pytest.raises(UserError, match="cannot read pretrained file .*UnpicklingError"):
        load_pretrained(tiny_model(), str(tmp_path / "code.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read pretrained file"):
        load_pretrained(tiny_model(), str(tmp_path / "junk.pt"))


def test_url_and_hub_sources_offline_and_online(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, dst, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError) as err:
        load_pretrained(tiny_model(), "https://example.org/x/" + RELEASE_FILE)
    assert "\n" not in str(err.value) and "offline?" in str(err.value) and "pretrained/" in str(err.value)

    source = tmp_path / "src.pt"
    torch.save({"ema": tinyfusion_state_dict()}, source)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, progress=True: os.link(source, dst))
    report = load_pretrained(tiny_model(), "https://example.org/x/" + RELEASE_FILE)
    assert report.path == str(tmp_path / "hub" / "checkpoints" / RELEASE_FILE)  # the torch hub cache

    import huggingface_hub

    def hub_offline(repo_id, filename):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_offline)
    with pytest.raises(UserError, match="cannot fetch hf://someone/tinydit/ckpt.pt .*offline?"):
        load_pretrained(tiny_model(), "hf://someone/tinydit/ckpt.pt")


def test_tinydit_d14_parameter_counts_on_meta():
    cfg = DiT_models["TinyDiT-D14/2"]
    d, depth, p = cfg["hidden_size"], cfg["depth"], cfg["patch_size"]
    # TinyFusion's own model, from its key table: pos_embed is a (frozen) Parameter there
    block = (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d) + (6 * d * d + 6 * d)
    theirs = {"pos_embed": 256 * d, "x_embedder": d * 4 * p * p + d, "t_embedder": 256 * d + d + d * d + d,
              "y_embedder": 1001 * d, "blocks": depth * block,
              "final_layer": p * p * 8 * d + p * p * 8 + 2 * d * d + 2 * d}
    assert sum(theirs.values()) == TINYFUSION_PARAMS

    with torch.device("meta"):
        model = build_model("TinyDiT-D14/2", 64, 768)
    groups = {"image": 0, "text": 0, "temporal": 0, "cross": 0}
    for name, param in model.named_parameters():
        groups["text" if name.startswith("text_embedder") else "temporal" if ".temporal_attn." in name
               else "cross" if ".cross_attn." in name else "image"] += param.numel()
    # inherited image part = TinyFusion's count minus what Text2Sign does not have or sizes differently
    pos_embed_buffer = 256 * 1152  # 294,912: a non-persistent buffer here, not a parameter
    class_table = 1001 * 1152  # 1,153,152: replaced by the text projection
    rgb_patch = 1152 * (4 - 3) * 2 * 2  # 4,608: 3 RGB input channels instead of 4 latent ones
    final_out = (32 - 12) * 1152 + (32 - 12)  # 23,060: 12 = 2*2*3 outputs instead of 2*2*8 (no learned sigma)
    assert groups["image"] == TINYFUSION_PARAMS - pos_embed_buffer - class_table - rgb_patch - final_out
    assert groups["image"] == 338_981_772
    assert groups["text"] == (768 * 1152 + 1152) + (1152 * 1152 + 1152) + 2 * 768 == 2_215_680
    assert groups["temporal"] == 14 * (3 * d * d + 3 * d + d * d + d) == 74_382_336
    assert groups["cross"] == 14 * ((d * d + d) + (768 * 2 * d + 2 * d) + (d * d + d)) == 61_996_032
    assert sum(groups.values()) == 477_575_820


def test_flops_counted_from_layer_shapes_match_torch_counter():
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.bench_tinydit import forward_flops

    bare = forward_flops("TinyDiT-D14/2", 1, 1, 64, temporal_attention=False, cross_attention=False)
    assert 3 * sum(bare.values()) == pytest.approx(1.57e12, rel=0.01)  # performance facts: 1.57 TFLOP per frame
    flops = forward_flops(ARCH, 2, 4, 16, text_len=5, text_dim=TEXT_DIM, frame_chunk_size=2)
    with torch.device("meta"):  # on meta, attention runs as counted matmuls (CPU's fused kernel is not counted)
        model = build_model(ARCH, 16, TEXT_DIM, frame_chunk_size=2)  # each chunk projects the text again
        inputs = (torch.empty(2, 3, 4, 16, 16), torch.zeros(2), torch.empty(2, 5, TEXT_DIM),
                  torch.ones(2, 5, dtype=torch.bool), torch.empty(2, TEXT_DIM))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*inputs)
    assert sum(flops.values()) == counter.get_total_flops()


def test_train_cli_reports_and_rejects_pretrained(tmp_path, synth_dir, tiny_encoder, capsys):
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save({"ema": tinyfusion_state_dict()}, good)
    torch.save({"ema": tinyfusion_state_dict(hidden=48)}, bad)

    def train(path):
        overrides = tiny_overrides(tmp_path, synth_dir, tiny_encoder, **{"model.pretrained": path,
                                                                         "train.max_steps": 1,
                                                                         "train.exp_name": path.stem})
        return main.main(["train", *sets(overrides)])
    assert train(good) == 0
    assert "loaded exactly        27 tensors" in capsys.readouterr().err
    assert train(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "bad.pt: shape mismatch for 30 tensor(s)" in err[-1]


def d14_release_state_dict(seed=0):
    """TinyFusion's 152 keys at TinyDiT-D14/2's exact shapes (tinydit-checkpoint.md), each a view of one shared random
    storage at a different offset (+ the sin-cos pos_embed): torch.save writes ~38 MB instead of 1.4 GB."""
    d, p = 1152, 2
    shapes = {"x_embedder.proj.weight": (d, 4, p, p), "x_embedder.proj.bias": (d,),
              "t_embedder.mlp.0.weight": (d, 256), "t_embedder.mlp.0.bias": (d,), "t_embedder.mlp.2.weight": (d, d),
              "t_embedder.mlp.2.bias": (d,),
              "y_embedder.embedding_table.weight": (1001, d)}
    for i in range(14):
        for name, rows, cols in [("attn.qkv", 3 * d, d), ("attn.proj", d, d), ("mlp.fc1", 4 * d, d),
                                 ("mlp.fc2", d, 4 * d), ("adaLN_modulation.1", 6 * d, d)]:
            shapes[f"blocks.{i}.{name}.weight"], shapes[f"blocks.{i}.{name}.bias"] = (rows, cols), (rows,)
    shapes.update({"final_layer.linear.weight": (p * p * 8, d), "final_layer.linear.bias": (p * p * 8,),
                   "final_layer.adaLN_modulation.1.weight": (2 * d, d),
                   "final_layer.adaLN_modulation.1.bias": (2 * d,)})
    largest = max(math.prod(shape) for shape in shapes.values())  # adaLN_modulation.1.weight, 6 x 1152 x 1152
    pool = torch.randn(largest + 2**20, generator=torch.Generator().manual_seed(seed)) / math.sqrt(d)
    sd = {"pos_embed": torch.from_numpy(dit_pos_embed(d, 16)).float()[None]}
    for i, (key, shape) in enumerate(shapes.items()):
        start = (i * 104_729) % (pool.numel() - math.prod(shape) + 1)
        sd[key] = pool[start:start + math.prod(shape)].view(shape)
    return sd


def test_tinyfusion_256_loads_every_tensor_exactly(tmp_path):
    """Latent mode: SD-VAE latents of 256x256 frames on the pretrained 16x16 grid keep DiT's learned sigma, so the
    release file loads with nothing adapted, and forward returns the epsilon half of the 8-channel final layer."""
    sd = d14_release_state_dict()
    assert len(sd) == 152 and sum(v.numel() for v in sd.values()) == TINYFUSION_PARAMS
    path = tmp_path / RELEASE_FILE
    torch.save({"ema": sd}, path)
    assert path.stat().st_size < 40e6  # the views share one storage
    cfg = load_config("tinyfusion-256", [f"model.pretrained={path}"])
    with torch.device("meta"):  # as the trainer builds it, without spending a random init on 477M parameters
        model = build_video_model(cfg, 768)
    model.to_empty(device="cpu")
    assert model.final_layer.linear.weight.shape == (32, 1152) and model.grid == 16  # learn_sigma, the file's grid
    report = load_pretrained(model, cfg.model.pretrained)

    assert report.counts == {"exact": 150, "adapted": 0, "recomputed": 1, "unused": 1, "new": len(report.new)}
    assert report.new and all(re.fullmatch(NEW, k) for k in report.new)  # only text / temporal / cross attention
    assert {k.split(".")[0] if k.startswith("text_") else k.split(".")[2] for k in report.new} == {
        "text_embedder", "temporal_attn", "cross_attn"}
    assert "adapted                0 tensors" in str(report)
    state = model.state_dict()
    for key in report.exact:
        assert torch.equal(state[key], sd[key]), key
    assert {"x_embedder.proj.weight", "final_layer.linear.weight", "final_layer.linear.bias"} <= set(report.exact)
    assert torch.equal(model.pos_embed, sd["pos_embed"])  # recomputed: the identical 16x16 table

    with torch.no_grad():
        for key in report.new:  # to_empty left them uninitialised; zero output projections make them identity
            state[key].zero_()
        model.blocks = model.blocks[:1]  # the output path under test follows the blocks; all 14 take 13 s on 1 thread
        final = []
        model.final_layer.register_forward_hook(lambda module, args, out: final.append(out))
        x = torch.randn(1, 4, 2, 32, 32, generator=torch.Generator().manual_seed(0))
        out = model.eval()(x, torch.tensor([500]), torch.zeros(1, 3, 768), torch.ones(1, 3, dtype=torch.bool),
                           torch.zeros(1, 768))
    assert out.shape == (1, 4, 2, 32, 32) and out.abs().amax() > 0
    tokens = final[0].reshape(2, 16, 16, 2, 2, 8)  # DiT's unpatchify: (frame, h, w, p, q, 8 channels)
    dit = torch.einsum("nhwpqc->nchpwq", tokens).reshape(2, 8, 32, 32)
    assert torch.equal(out[0], dit[:, :4].transpose(0, 1))  # the epsilon half; the sigma half is dropped


def test_learned_sigma_only_for_a_pretrained_latent_model():
    """Pixel mode keeps the 3-channel output (the file's final layer is adapted); no file, no sigma half."""
    rows = {}
    for preset, overrides in [("tinyfusion", []), ("tinyfusion-256", []), ("tinyfusion-256", ["model.pretrained="])]:
        with torch.device("meta"):
            model = build_video_model(load_config(preset, overrides), 768)
        rows[preset, bool(overrides)] = model.final_layer.linear.weight.shape[0]
        if (preset, overrides) == ("tinyfusion-256", []):  # image part: all of TinyFusion's but pos_embed, classes
            image = sum(p.numel() for n, p in model.named_parameters() if not re.fullmatch(NEW, n))
            assert image == TINYFUSION_PARAMS - 256 * 1152 - 1001 * 1152 == 339_009_440
    assert rows == {("tinyfusion", False): 2 * 2 * 3, ("tinyfusion-256", False): 2 * 2 * 8,
                    ("tinyfusion-256", True): 2 * 2 * 4}
