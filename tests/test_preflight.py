"""Pre-flight scripts: they pass on a healthy tiny setup, and every planted fault makes them exit 1 naming it."""
import shutil

import pytest
import torch

import methods.training.trainer
import pre_training_checklist as checklist
import verify_training_ready as verify
from conftest import tiny_overrides, tinyfusion_state_dict
from models import build_model
from methods.training.preflight import FAIL, PASS, WARN, Checks


def cli_args(tmp_path, data_dir, encoder, **extra):
    return [a for o in tiny_overrides(tmp_path, data_dir, encoder, **extra) for a in ("--set", o)]


def lines(out: str) -> dict[str, str]:
    """check name -> status, from the "[STATUS] name: detail" lines."""
    found = {}
    for line in out.splitlines():
        if line.startswith("["):
            status, rest = line[1:].split("] ", 1)
            found[rest.split(":", 1)[0]] = status
    return found


VERIFY_CHECKS = ["config", "setup", "forward", "loss finite", "gradient reaches the patch embedding",
                 "gradient reaches the text projection", "gradient reaches the final layer", "output finite",
                 "output not all-zero", "output std", "text changes the prediction",
                 "text tokens change the prediction"]


def test_verify_passes_from_random_init_and_pretrained(tmp_path, synth_dir, tiny_encoder, capsys):
    assert verify.main(cli_args(tmp_path, synth_dir, tiny_encoder)) == 0
    out = capsys.readouterr().out
    assert lines(out) == {name: PASS for name in VERIFY_CHECKS}
    assert "at probe step 3" in out  # adaLN-Zero: the text projection gets its first gradient in step 3

    torch.save({"ema": tinyfusion_state_dict()}, tmp_path / "tiny.pt")
    args = cli_args(tmp_path, synth_dir, tiny_encoder, **{"model.pretrained": tmp_path / "tiny.pt"})
    assert verify.main(args + ["--max-steps", "1"]) == 0  # pretrained weights: one step reaches everything
    captured = capsys.readouterr()
    assert lines(captured.out) == {name: PASS for name in VERIFY_CHECKS}
    assert "loaded exactly" in captured.err


def text_blind(model):
    original = model.forward
    model.forward = lambda x, t, text_tokens, text_mask, pooled, drop=None: original(
        x, t, torch.zeros_like(text_tokens), text_mask, torch.zeros_like(pooled), drop)
    return model


def zero_output(model):
    original = model.forward
    model.forward = lambda *args, **kwargs: original(*args, **kwargs) * 0
    return model


def frozen_backbone(model):
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("final_layer"))
    return model


@pytest.mark.parametrize("plant, failing", [
    (text_blind, {"text changes the prediction", "text tokens change the prediction",
                  "gradient reaches the text projection"}),
    (zero_output, {"output not all-zero", "output std", "text changes the prediction",
                   "text tokens change the prediction", "gradient reaches the patch embedding",
                   "gradient reaches the text projection", "gradient reaches the final layer"}),
    (frozen_backbone, {"gradient reaches the patch embedding", "gradient reaches the text projection",
                       "text tokens change the prediction"}),  # frozen cross-attention stays zero
])
def test_verify_fails_on_planted_faults(tmp_path, synth_dir, tiny_encoder, capsys, monkeypatch, plant, failing):
    build = methods.training.trainer.build_video_model
    monkeypatch.setattr(methods.training.trainer, "build_video_model", lambda cfg, dim: plant(build(cfg, dim)))
    assert verify.main(cli_args(tmp_path, synth_dir, tiny_encoder)) == 1
    out = capsys.readouterr().out
    assert {name for name, status in lines(out).items() if status == FAIL} == failing
    in_order = ", ".join(n for n in VERIFY_CHECKS if n in failing)
    assert out.splitlines()[-1].endswith(f"{len(failing)} failed ({in_order})")
    if plant is frozen_backbone:
        assert "x_embedder.proj.weight: frozen (requires_grad=False)" in out


CHECKLIST = ["config", "data folder", "captions present", "clips decodable", "text encoder", "autoencoder", "model",
             "pretrained",
             "backbone trainable", "output directories", "disk space", "TensorBoard", "device and memory"]


def run_checklist(tmp_path, data_dir, encoder, capsys, **extra):
    code = checklist.main(cli_args(tmp_path, data_dir, encoder, **extra))
    return code, capsys.readouterr().out


def test_checklist_passes_on_healthy_setup(tmp_path, synth_dir, tiny_encoder, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.save({"ema": tinyfusion_state_dict()}, tmp_path / "tiny.pt")
    code, out = run_checklist(tmp_path, synth_dir, tiny_encoder, capsys, **{"model.pretrained": tmp_path / "tiny.pt"})
    assert code == 0, out
    assert lines(out) == {name: PASS for name in CHECKLIST}, out
    assert "27 exact, 3 adapted, 1 recomputed, 1 unused, 28 new" in out  # 2 of the new: align gains
    assert "14 clips decode, 8..8 frames, sizes 32x32" in out


@pytest.fixture
def damaged_data(tmp_path, synth_dir):
    folder = tmp_path / "data"
    shutil.copytree(synth_dir, folder)
    victim = sorted(folder.glob("*.gif"))[3]
    victim.write_bytes(victim.read_bytes()[:60])  # truncated mid-file
    (folder / "uncaptioned.gif").write_bytes((folder / sorted(p.name for p in folder.glob("*.gif"))[0]).read_bytes())
    return folder, victim.name


def test_checklist_names_corrupt_gif_and_warns_missing_caption(tmp_path, damaged_data, tiny_encoder, capsys):
    folder, victim = damaged_data
    code, out = run_checklist(tmp_path, str(folder), tiny_encoder, capsys)
    assert code == 1
    status = lines(out)
    assert status["clips decodable"] == FAIL and f"1 of 14 clip(s) do not decode: {victim}" in out
    assert status["captions present"] == "WARN" and "uncaptioned.gif (no caption)" in out
    assert [n for n, s in status.items() if s == FAIL] == ["clips decodable"]


@pytest.mark.parametrize("fault", ["missing data", "unwritable dir", "unwritable log dir", "wrong checkpoint shapes",
                                   "missing checkpoint", "text encoder offline"])
def test_checklist_fails_naming_each_planted_fault(tmp_path, synth_dir, tiny_encoder, capsys, monkeypatch, fault):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "a_file").write_text("not a folder")
    torch.save({"ema": tinyfusion_state_dict(hidden=48)}, tmp_path / "wide.pt")
    data, extra, failing, needle = synth_dir, {}, None, None
    if fault == "missing data":
        data, failing, needle = str(tmp_path / "no_such_folder"), "data folder", "does not exist"
    elif fault == "unwritable dir":
        extra = {"train.checkpoint_dir": tmp_path / "a_file" / "ck"}
        failing, needle = "output directories", f"not writable: train.checkpoint_dir: {tmp_path / 'a_file' / 'ck' / 'tiny'}"
    elif fault == "unwritable log dir":  # the trainer's output check and the event-file check both see it
        extra, failing, needle = {"train.log_dir": tmp_path / "a_file"}, ["output directories", "TensorBoard"], "a_file"
    elif fault == "wrong checkpoint shapes":
        extra, failing, needle = {"model.pretrained": tmp_path / "wide.pt"}, "pretrained", "shape mismatch"
    elif fault == "missing checkpoint":
        extra, failing, needle = {"model.pretrained": tmp_path / "gone.pt"}, "pretrained", "not found"
    else:
        extra = {"text.encoder": "no-such-org/no-such-encoder"}
        failing, needle = "text encoder", "cannot be reached (offline)"
    code, out = run_checklist(tmp_path, data, tiny_encoder, capsys, **extra)
    assert code == 1
    failing = failing if isinstance(failing, list) else [failing]
    assert [n for n, s in lines(out).items() if s == FAIL] == failing, out
    for name in failing:
        assert needle in next(line for line in out.splitlines() if line.startswith(f"[FAIL] {name}:"))


def test_check_functions_fail_on_planted_objects(tmp_path):
    model = build_model("DiT-Test/4", 16, 8)
    assert checklist.check_backbone_trainable(model)[0] == PASS
    for p in model.blocks.parameters():
        p.requires_grad_(False)
    status, detail = checklist.check_backbone_trainable(model)
    assert status == FAIL and "frozen: blocks.{0..1}.attn.qkv.{weight,bias}" in detail
    checks = Checks()
    checks.run("backbone trainable", checklist.check_backbone_trainable, model)
    assert checks.finish() == 1 and checks.failed == ["backbone trainable"]

    status, detail = checklist.check_disk(str(tmp_path), n_params=10**15, steps=10, checkpoint_every=5)
    assert status == FAIL and "not even one checkpoint fits" in detail
    status, _ = checklist.check_disk(str(tmp_path), n_params=1000, steps=10, checkpoint_every=5)
    assert status == PASS
    status, detail = checklist.check_captions([], [("a.gif", "no caption")])
    assert status == FAIL and "a.gif (no caption)" in detail


def test_checklist_autoencoder_check(tmp_path, synth_dir):
    from methods.run_config import load_config
    from models.autoencoder import FrameAutoencoder

    def check(**fields):
        sets = [f"data.data_dir={synth_dir}", "data.image_size=16", *(f"{k}={v}" for k, v in fields.items())]
        return checklist.check_autoencoder(load_config("demo", sets))

    assert check()[:2] == (PASS, "none: the model diffuses pixels")
    FrameAutoencoder(4, 4, 8).save(str(tmp_path / "ae"), meta={"data_dir": str(synth_dir), "image_size": 16})
    status, detail = check(**{"autoencoder.kind": "own", "autoencoder.path": tmp_path / "ae"})
    assert status == PASS and "16px frames -> (4, 4, 4) latents, round trip fine" in detail
    status, detail = check(**{"autoencoder.kind": "own", "autoencoder.path": tmp_path / "ae",
                              "data.data_dir": tmp_path})
    assert status == WARN and f"trained on {synth_dir}, not on data.data_dir" in detail
    FrameAutoencoder(4, 4, 8).save(str(tmp_path / "ae32"), meta={"data_dir": str(synth_dir), "image_size": 32})
    status, detail = check(**{"autoencoder.kind": "own", "autoencoder.path": tmp_path / "ae32"})
    assert status == WARN and "trained on 32px frames, not 16px" in detail
    checks = Checks()
    checks.run("autoencoder", checklist.check_autoencoder, load_config("demo", [
        "data.image_size=16", "autoencoder.kind=own", f"autoencoder.path={tmp_path / 'ae'}",
        "autoencoder.latent_channels=8"]))
    checks.run("autoencoder", checklist.check_autoencoder, load_config("demo", [
        "data.image_size=16", "autoencoder.kind=own", f"autoencoder.path={tmp_path / 'gone'}"]))
    assert checks.failed == ["autoencoder", "autoencoder"]
    assert "autoencoder.latent_channels=8 but the own autoencoder" in checks.results[0].detail
    assert "no autoencoder at" in checks.results[1].detail
