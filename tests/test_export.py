"""`export`: safetensors + config.json + model card; `sample --model` draws the checkpoint's clips bit for bit, and
reading an export never unpickles anything."""
from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import in_process, run
from config import Config
from methods.sharing.export_format import CONFIG_FILE, WEIGHTS_FILE
from methods.pipeline import SignPipeline
from utils.gif import read_gif


@pytest.fixture
def trained(tiny_checkpoint):
    return tiny_checkpoint


def gif_frames(folder):
    (name,) = [n for n in os.listdir(folder) if n.endswith(".gif")]
    return read_gif(os.path.join(folder, name))[0]


def test_export_writes_weights_config_card_and_samples(trained):
    tmp, ckpt = trained
    out = tmp / "exported"
    done = run("export", "--checkpoint", ckpt, "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(os.listdir(out)) == [".text2sign.json", "README.md", "config.json", "model.safetensors", "samples"]
    assert sorted(os.listdir(out / "samples")) == ["hello.gif", "thank_you.gif"]  # the run's sample prompts
    state = torch.load(ckpt, weights_only=True)
    weights = load_file(out / WEIGHTS_FILE)
    assert weights.keys() == state["ema"].keys()
    assert all(torch.equal(weights[k], state["ema"][k]) for k in weights)  # the EMA weights, unchanged
    meta = json.loads((out / CONFIG_FILE).read_text())
    assert (meta["architecture"], meta["num_frames"], meta["image_size"], meta["step"]) == ("DiT-Test/4", 4, 16, 4)
    assert meta["training"]["clips"] == 13 and meta["training"]["captions"] == 13
    assert meta["caption_words"] == state["caption_words"]
    trained_with, exported = Config.from_dict(state["config"]), Config.from_dict(meta["config"])
    assert (exported.model, exported.diffusion, exported.text) == (trained_with.model, trained_with.diffusion,
                                                                     trained_with.text)
    assert (exported.train.sample_dir, exported.data.cache_dir) == ("generated_samples", "cache")  # not the trainer's
    card = (out / "README.md").read_text()
    assert "4 optimizer steps" in card and "13 training clips with 13 distinct captions" in card
    assert "![hello](samples/hello.gif)" in card and "Not evaluated at export" in card


def test_sampling_an_export_gives_the_checkpoints_clips_bit_for_bit(trained):
    tmp, ckpt = trained
    out = tmp / "roundtrip"
    assert in_process("export", "--checkpoint", ckpt, "--out", str(out), "--no-samples").returncode == 0
    a = in_process("sample", "--checkpoint", ckpt, "--text", "hello", "--seed", "7", "--output_dir",
                   str(tmp / "from_ckpt"))
    b = in_process("sample", "--model", str(out), "--text", "hello", "--seed", "7", "--output_dir",
                   str(tmp / "from_export"))
    assert a.returncode == 0 and b.returncode == 0, a.stderr[-2000:] + b.stderr[-2000:]
    fa, fb = gif_frames(tmp / "from_ckpt"), gif_frames(tmp / "from_export")
    assert fa.shape == (4, 16, 16, 3) and np.array_equal(fa, fb)


def test_evaluate_takes_an_export_and_looks_for_its_evaluator_inside_it(trained):
    tmp, ckpt = trained
    out = tmp / "for_eval"
    assert in_process("export", "--checkpoint", ckpt, "--out", str(out), "--no-samples").returncode == 0
    done = in_process("evaluate", "--model", str(out), "--split", "train")
    assert done.returncode == 2 and str(out / "evaluator.pt") in done.stderr, done.stderr[-2000:]
    both = in_process("sample", "--model", str(out), "--checkpoint", ckpt, "--text", "hi")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_reading_an_export_never_unpickles(trained, monkeypatch):
    tmp, ckpt = trained
    out = tmp / "nopickle"
    assert in_process("export", "--checkpoint", ckpt, "--out", str(out), "--no-samples").returncode == 0

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling while reading an export")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    pipe = SignPipeline.from_pretrained(str(out), text_encoder=False)
    assert pipe.cfg.model.arch == "DiT-Test/4" and pipe.state["step"] == 4 and not pipe.model.training


def test_export_with_an_evaluation_report_puts_its_numbers_in_the_card(trained):
    tmp, ckpt = trained
    group = {"num_captions": 8, "generated_r1": 0.625, "real_r1": 1.0, "chance_r1": 0.125, "frechet_distance": 0.5,
             "ssim": 0.4, "temporal_change_generated": 9.5, "temporal_change_real": 7.1}
    report = tmp / "eval.json"
    report.write_text(json.dumps({"steps": 25, "guidance": 5.0, "samples_per_caption": 4, "seed": 0,
                                  "groups": {"train": group}}))
    out = tmp / "with_eval"
    assert in_process("export", "--checkpoint", ckpt, "--out", str(out), "--no-samples", "--evaluation",
                      str(report)).returncode == 0
    assert "| train (8) | 0.625 | 1.000 | 0.125 | 0.500 | 0.400 | 9.5 (7.1) |" in (out / "README.md").read_text()


@pytest.mark.parametrize("damage, needle", [
    ("config", "config.json: not readable JSON"),
    ("format", "is not a Text2Sign export"),
    ("weights", "cannot read"),
    ("no_weights", "model.safetensors is missing"),
])
def test_a_damaged_export_is_a_one_line_error(trained, damage, needle):
    tmp, ckpt = trained
    whole, out = tmp / "undamaged", tmp / f"damaged_{damage}"
    if not whole.exists():
        assert in_process("export", "--checkpoint", ckpt, "--out", str(whole), "--no-samples").returncode == 0
    shutil.copytree(whole, out)
    if damage == "config":
        (out / CONFIG_FILE).write_text("{not json")
    elif damage == "format":
        (out / CONFIG_FILE).write_text(json.dumps({"format": "something-else"}))
    elif damage == "weights":
        data = (out / WEIGHTS_FILE).read_bytes()
        (out / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    else:
        os.remove(out / WEIGHTS_FILE)
    done = in_process("sample", "--model", str(out), "--text", "hello")
    assert done.returncode == 2 and needle in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_export_refuses_a_folder_holding_other_files(trained):
    tmp, ckpt = trained
    (tmp / "busy").mkdir()
    (tmp / "busy" / "notes.txt").write_text("mine")
    done = in_process("export", "--checkpoint", ckpt, "--out", str(tmp / "busy"))
    assert done.returncode == 2 and "is not empty and was not made by `python main.py export`" in done.stderr
    assert os.listdir(tmp / "busy") == ["notes.txt"]
