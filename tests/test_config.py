"""Config: presets, --set parsing, one-line errors, primitive round trip, and every field read somewhere."""
import ast
import dataclasses
import pathlib
import re

import pytest

from config import PRESETS, Config, ConfigError, apply_overrides, build_config, format_config, set_field
from methods.run_config import load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_tinyfusion_preset_is_the_seed_configuration():
    cfg = build_config("tinyfusion")
    assert (cfg.model.arch, cfg.data.num_frames, cfg.data.image_size) == ("TinyDiT-D14/2", 16, 64)
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.weight_decay, cfg.train.grad_clip) == (1, 1e-4, 0.01, 1.0)
    assert (cfg.diffusion.timesteps, cfg.diffusion.schedule, cfg.train.epochs) == (50, "cosine", 1000)
    assert cfg.text.encoder == "distilbert-base-uncased"


def check_every_preset() -> list[str]:
    """Every preset through load_config, the check a command runs (ranges, then the choices and the model's clip
    rules: build_config alone checks ranges, so an unknown arch or a clip its patch does not divide would pass)."""
    for name in PRESETS:
        try:
            load_config(name)
        except ConfigError as err:
            raise ConfigError(f"preset {name!r}: {err}") from err
    return list(PRESETS)


def test_every_preset_validates():
    assert {"tinyfusion", "demo", "real", "real-large"} <= set(check_every_preset())  # real*: never checked before


@pytest.mark.parametrize("base, field, value, needle", [
    ("real", "model.arch", "UNet3D-Nope", "model.arch='UNet3D-Nope' must be one of"),
    ("demo", "data.image_size", 30, "data.image_size=30 must be a multiple of 4 for model.arch=UNet3D-S3"),
    ("real", "data.image_size", 72, "data.image_size=72 / autoencoder.down=4 = a 18x18 latent grid, which must be a "
                                    "multiple of 4 for model.arch=UNet3D-S"),
])
def test_the_preset_check_fails_on_a_planted_fault(monkeypatch, base, field, value, needle):
    """A preset that passes the range checks but names an unknown arch, or a clip size its model cannot split."""
    import config

    def planted():
        cfg = getattr(config, base)()
        section, name = field.split(".")
        setattr(getattr(cfg, section), name, value)
        return cfg

    monkeypatch.setitem(config.PRESETS, "planted", planted)
    assert build_config("planted")  # the range checks alone let it through: why the test runs load_config
    with pytest.raises(ConfigError, match="^preset 'planted': " + re.escape(needle)):
        check_every_preset()


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
    ("diffusion.prediction=x0", "diffusion.prediction"),
    ("diffusion.sampler=euler", "diffusion.sampler"),
    ("data.resize_mode=stretch", "data.resize_mode"),
    ("train.lr_schedule=linear", "train.lr_schedule"),
    ("train.precision=fp16", "train.precision"),
])
def test_bad_fields_and_values_name_the_field(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config("demo", [override])
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_eta_is_ddims_alone():
    assert load_config("demo", ["diffusion.sampler=dpm++2m"]).diffusion.sampler == "dpm++2m"
    with pytest.raises(ConfigError, match=r"^diffusion.eta=0.5 must be 0 with diffusion.sampler=dpm\+\+2m"):
        load_config("demo", ["diffusion.sampler=dpm++2m", "diffusion.eta=0.5"])
    assert load_config("demo", ["diffusion.eta=0.5"]).diffusion.eta == 0.5  # ddim's stochasticity


def test_ambiguous_bare_name_is_rejected():
    @dataclasses.dataclass
    class First:
        seed: int = 0

    @dataclasses.dataclass
    class Second:
        seed: int = 1
        only_here: int = 2

    @dataclasses.dataclass
    class TwoSections:
        first: First = dataclasses.field(default_factory=First)
        second: Second = dataclasses.field(default_factory=Second)

    cfg = TwoSections()
    with pytest.raises(ConfigError, match=r"'seed' is a field of several sections \(first, second\)"):
        set_field(cfg, "seed", "7")
    set_field(cfg, "second.seed", "7")
    set_field(cfg, "only_here", "9")  # unique bare names still work
    assert (cfg.first.seed, cfg.second.seed, cfg.second.only_here) == (0, 7, 9)
    assert build_config("demo", ["seed=7"]).train.seed == 7


def test_round_trip_through_primitives():
    cfg = build_config("demo", ["train.sample_prompts=a,b", "model.caption_dropout=0.2"])
    d = cfg.to_dict()
    assert Config.from_dict(d) == cfg
    assert "sample_prompts = ('a', 'b')" in format_config(cfg)


SECTIONS = {f.name: type(getattr(Config(), f.name)) for f in dataclasses.fields(Config)}  # name -> dataclass
SECTION_OF_TYPE = {cls.__name__: name for name, cls in SECTIONS.items()}


def section_reads(source: str) -> set[tuple[str, str]]:
    """(section, field) pairs that code reads: `<expr>.<section>.<field>`, or `<name>.<field>` inside a function
    where <name> is bound to `<expr>.<section>` (`tc = cfg.train`) or annotated with the section's dataclass
    (`dc: DataConfig`). A bare `.device` on anything else is not a read of train.device."""
    reads = set()
    tree = ast.parse(source)
    scopes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.Lambda))]
    for scope in scopes:
        aliases = {}
        if not isinstance(scope, ast.Module):
            for arg in scope.args.args + scope.args.kwonlyargs:
                if arg.annotation is not None and ast.unparse(arg.annotation).strip("'\"") in SECTION_OF_TYPE:
                    aliases[arg.arg] = SECTION_OF_TYPE[ast.unparse(arg.annotation).strip("'\"")]
            for node in ast.walk(scope):
                if isinstance(node, ast.Assign) and len(node.targets) == 1:
                    target, value = node.targets[0], node.value
                    pairs = (zip(target.elts, value.elts) if isinstance(target, ast.Tuple) and
                             isinstance(value, ast.Tuple) else [(target, value)])
                    for t, v in pairs:
                        if isinstance(t, ast.Name) and isinstance(v, ast.Attribute) and v.attr in SECTIONS:
                            aliases[t.id] = v.attr
        for node in ast.walk(scope):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                owner = node.value
                if isinstance(owner, ast.Attribute) and owner.attr in SECTIONS:
                    reads.add((owner.attr, node.attr))
                elif isinstance(owner, ast.Name) and owner.id in aliases:
                    reads.add((aliases[owner.id], node.attr))
    return reads


def test_field_read_check_tells_reads_from_lookalikes():
    assert section_reads("def f(x):\n    return x.device, x.seed, x.epochs") == set()
    assert section_reads("def f(cfg):\n    return cfg.train.device") == {("train", "device")}
    assert section_reads("def f(cfg):\n    tc, dc = cfg.train, cfg.data\n    return tc.seed + dc.num_frames") == {
        ("train", "seed"), ("data", "num_frames")}
    assert section_reads("def f(dc: 'DataConfig'):\n    return dc.image_size") == {("data", "image_size")}
    assert section_reads("def f(dc: DiffusionConfig):\n    return dc.image_size") == {("diffusion", "image_size")}
    assert section_reads("def f(cfg):\n    cfg.train.seed = 3") == set()  # a write is not a read


def test_every_field_is_read_somewhere():
    reads = set()
    for p in ROOT.rglob("*.py"):
        if p.name != "config.py" and not {"tests", ".git"} & set(p.parts):
            reads |= section_reads(p.read_text(encoding="utf-8"))
    unread = [f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)
              if (name, f.name) not in reads]
    assert unread == [], f"config fields never read: {unread}"


def test_apply_overrides_keeps_order():
    cfg = apply_overrides(Config(), ["train.lr=1", "train.lr=2"])
    assert cfg.train.lr == 2.0
