"""Config: presets, --set parsing, one-line errors, primitive round trip, and every field read somewhere."""
import dataclasses
import pathlib
import re

import pytest

from config import PRESETS, Config, ConfigError, apply_overrides, build_config, format_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_tinyfusion_preset_is_the_seed_configuration():
    cfg = build_config("tinyfusion")
    assert (cfg.model.arch, cfg.data.num_frames, cfg.data.image_size) == ("TinyDiT-D14/2", 16, 64)
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.weight_decay, cfg.train.grad_clip) == (1, 1e-4, 0.01, 1.0)
    assert (cfg.diffusion.timesteps, cfg.diffusion.schedule, cfg.train.epochs) == (50, "cosine", 1000)
    assert cfg.text.encoder == "distilbert-base-uncased"


def test_every_preset_validates():
    for name in PRESETS:
        build_config(name)


def test_overrides_parse_by_declared_type():
    cfg = build_config("demo", ["train.lr=3e-4", "batch_size=2", "data.synth_if_missing=false",
                                "train.sample_prompts=hello, thank you", "diffusion.schedule=linear"])
    assert cfg.train.lr == 3e-4 and cfg.train.batch_size == 2 and cfg.data.synth_if_missing is False
    assert cfg.train.sample_prompts == ("hello", "thank you")
    assert cfg.diffusion.schedule == "linear"


@pytest.mark.parametrize("override, needle", [
    ("train.nope=1", "train.nope"),
    ("bogus=1", "bogus"),
    ("train.batch_size=two", "train.batch_size"),
    ("train.batch_size=0", "train.batch_size"),
    ("diffusion.schedule=zigzag", "diffusion.schedule"),
    ("model.arch=DiT-XXL", "model.arch"),
    ("diffusion.sample_steps=99", "diffusion.sample_steps"),
    ("data.image_size=30", "data.image_size"),
    ("train.exp_name=../x", "train.exp_name"),
    ("noequals", "field=value"),
])
def test_bad_fields_and_values_name_the_field(override, needle):
    with pytest.raises(ConfigError) as err:
        build_config("demo", [override])
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_ambiguous_bare_name_is_rejected():
    # "seed" exists only in train; "synth_seed" only in data; a name in two sections would need the prefix.
    assert build_config("demo", ["seed=7"]).train.seed == 7


def test_round_trip_through_primitives():
    cfg = build_config("demo", ["train.sample_prompts=a,b", "model.caption_dropout=0.2"])
    d = cfg.to_dict()
    assert Config.from_dict(d) == cfg
    assert "sample_prompts = ('a', 'b')" in format_config(cfg)


def test_every_field_is_read_somewhere():
    sources = "\n".join(p.read_text() for p in ROOT.rglob("*.py")
                        if p.name != "config.py" and "tests" not in p.parts and ".git" not in p.parts)
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.type if not isinstance(section.type, str) else
                                    type(getattr(Config(), section.name))):
            assert re.search(rf"\.{f.name}\b", sources), f"{section.name}.{f.name} is never read"


def test_apply_overrides_keeps_order():
    cfg = apply_overrides(Config(), ["train.lr=1", "train.lr=2"])
    assert cfg.train.lr == 2.0
