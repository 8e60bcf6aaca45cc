"""One definition per setting: mzsr/config.schema.yaml.

The workflow fills in what a config leaves out from the schema's defaults; the package's own
defaults (the stages' *_DEFAULTS dicts, the keyword defaults of the functions that take a setting,
the `mzsr` command's options) must be the same values, and config/config.yaml, which spells the
paper's settings out, must say what the schema says. Each check names the setting that differs.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import yaml

from mzsr import settings
from mzsr.adaptation.adapt import ADAPT_DEFAULTS, AdaptOptions, make_son
from mzsr.adaptation.zssr import AUGMENT_DEFAULTS, ZSSR_DEFAULTS, random_augment, stalled, zssr
from mzsr.cli.commands import _estimate_settings
from mzsr.cli.parser import build_parser
from mzsr.data.patches import FLAT_THRESHOLD
from mzsr.data.tasks import write_task_shard
from mzsr.estimation.estimate import check_estimable, estimate_kernel
from mzsr.estimation.kernelgan import KERNELGAN_DEFAULTS, Discriminator, Generator, significant_kernel
from mzsr.network.model import init_zssr_
from mzsr.training.maml import query_loss_weights
from mzsr.training.meta import META_DEFAULTS
from mzsr.training.pretrain import PRETRAIN_DEFAULTS

REPO = Path(__file__).resolve().parents[1]

# section: (the stage's dict, the section's settings it is not given, what it takes from elsewhere:
# {key: dotted path of another setting, or (the value,) for one the workflow sets per job}), as
# workflow/rules/common.smk passes them (pretrain_cfg, meta_cfg; scripts pop the seeds).
STAGES = {
    "pretrain": (PRETRAIN_DEFAULTS, {"tf_checkpoint"}, {"patch_size": "patches.pretrain.patch_size", "scale": "scale"}),
    "meta": (
        META_DEFAULTS,
        {"weights_folder"},
        {"scale": "scale", "subsampling": ("direct",)},
    ),  # the model's subsampling
    "zssr": (ZSSR_DEFAULTS, {"seed"}, {}),  # zssr(seed=...)
    "estimate": (KERNELGAN_DEFAULTS, {"seed"}, {}),  # estimate_kernel(seed=...)
    "adapt": (ADAPT_DEFAULTS, set(), {}),
}


def same(a, b) -> bool:
    """Equal and of one kind (True is not 1; an int and a float may be the same number)."""
    numbers = (int, float)
    kinds_agree = type(a) is type(b) or (type(a) in numbers and type(b) in numbers)
    return kinds_agree and a == b


def differences(code: dict, section: str, left_out=(), elsewhere=None) -> list[str]:
    """The settings in which a code dict and the schema's section disagree, one line each."""
    expected = settings.defaults(section, without=tuple(left_out))
    for key, source in (elsewhere or {}).items():
        expected[key] = source[0] if isinstance(source, tuple) else settings.default(source)
    out = [f"{section}.{k}: in the code ({code[k]!r}), not in the schema" for k in code if k not in expected]
    out += [f"{section}.{k}: in the schema ({expected[k]!r}), not in the code" for k in expected if k not in code]
    out += [
        f"{section}.{k}: the code says {code[k]!r}, the schema {expected[k]!r}"
        for k in code
        if k in expected and not same(code[k], expected[k])
    ]
    return out


@pytest.mark.parametrize("section", STAGES)
def test_each_stages_defaults_are_its_schema_section(section):
    code, left_out, elsewhere = STAGES[section]
    assert not differences(code, section, left_out, elsewhere), "\n".join(
        differences(code, section, left_out, elsewhere)
    )


def test_a_knob_only_in_the_code_or_a_drifted_value_is_named():
    assert differences({**ZSSR_DEFAULTS, "new_knob": 1}, "zssr", {"seed"}) == [
        "zssr.new_knob: in the code (1), not in the schema"
    ]
    assert differences({**ZSSR_DEFAULTS, "lr_min": 1e-5}, "zssr", {"seed"}) == [
        "zssr.lr_min: the code says 1e-05, the schema 9e-06"
    ]
    assert differences({k: v for k, v in ZSSR_DEFAULTS.items() if k != "slope_range"}, "zssr", {"seed"}) == [
        "zssr.slope_range: in the schema (256), not in the code"
    ]
    assert differences({**PRETRAIN_DEFAULTS, "checkpoint_every": 1000}, "pretrain", *STAGES["pretrain"][1:]) == [
        "pretrain.checkpoint_every: the code says 1000, the schema 5000"
    ]  # a drift that once happened
    assert differences({**META_DEFAULTS, "first_order": 0}, "meta", *STAGES["meta"][1:]) == [
        "meta.first_order: the code says 0, the schema False"
    ]


def _keyword_defaults(function, *names) -> dict:
    parameters = inspect.signature(function).parameters
    return {name: parameters[name].default for name in names}


def test_keyword_defaults_of_the_functions_that_take_a_setting_are_the_schemas():
    d = settings.default
    checks = {  # "function(argument)": (its default, the setting)
        **{
            f"random_augment({k})": (v, d(f"zssr.{k}"))
            for k, v in _keyword_defaults(random_augment, *AUGMENT_DEFAULTS).items()
        },
        "AUGMENT_DEFAULTS": (AUGMENT_DEFAULTS, {k: d(f"zssr.{k}") for k in AUGMENT_DEFAULTS}),
        "stalled(change_ratio)": (_keyword_defaults(stalled, "change_ratio")["change_ratio"], d("zssr.change_ratio")),
        "init_zssr_(variance)": (_keyword_defaults(init_zssr_, "variance")["variance"], d("zssr.init_variance")),
        "zssr(seed)": (_keyword_defaults(zssr, "seed")["seed"], d("zssr.seed")),
        "query_loss_weights(floor)": (
            _keyword_defaults(query_loss_weights, "floor")["floor"],
            d("meta.final_weight_floor"),
        ),
        "Generator(channels)": (_keyword_defaults(Generator, "channels")["channels"], d("estimate.g_channels")),
        "Generator(structure)": (
            list(_keyword_defaults(Generator, "structure")["structure"]),
            d("estimate.g_structure"),
        ),
        "Discriminator(channels)": (_keyword_defaults(Discriminator, "channels")["channels"], d("estimate.d_channels")),
        "Discriminator(layers)": (_keyword_defaults(Discriminator, "layers")["layers"], d("estimate.d_layers")),
        "Discriminator(kernel)": (_keyword_defaults(Discriminator, "kernel")["kernel"], d("estimate.d_kernel")),
        "significant_kernel(n)": (_keyword_defaults(significant_kernel, "n")["n"], d("estimate.n_filtering")),
        "check_estimable(crop)": (_keyword_defaults(check_estimable, "crop")["crop"], d("estimate.crop")),
        "estimate_kernel(seed)": (_keyword_defaults(estimate_kernel, "seed")["seed"], d("estimate.seed")),
        "AdaptOptions(steps)": (list(AdaptOptions().steps), d("adapt.steps")),
        **{
            f"AdaptOptions({k})": (getattr(AdaptOptions(), k), d(f"adapt.{k}"))
            for k in ("schedule", "preset", "grid", "noise_level")
        },
        **{
            f"make_son({k})": (v, d(f"adapt.{k}"))
            for k, v in _keyword_defaults(make_son, "grid", "noise_level").items()
        },
        "FLAT_THRESHOLD (patches.pretrain)": (FLAT_THRESHOLD, d("patches.pretrain.flat_threshold")),
        "FLAT_THRESHOLD (patches.meta)": (FLAT_THRESHOLD, d("patches.meta.flat_threshold")),
    }
    wrong = [
        f"{name}: {value!r}, the schema {setting!r}"
        for name, (value, setting) in checks.items()
        if not same(value, setting)
    ]
    assert not wrong, "\n".join(wrong)
    # the task settings have their defaults in the schema only
    parameters = inspect.signature(write_task_shard).parameters
    assert all(parameters[k].default is inspect.Parameter.empty for k in ("n_support", "n_query", "seed"))


def test_the_commands_defaults_are_the_schemas():
    d = settings.default
    upscale = build_parser().parse_args(["upscale", "in.png", "--out", "out"])
    estimate = build_parser().parse_args(["estimate-kernel", "in.png", "--out", "out"])
    kernelgan = build_parser().parse_args(["estimate-kernel", "in.png", "--out", "out", "--estimator", "kernelgan"])
    checks = {
        "upscale --schedule": (upscale.schedule, d("adapt.schedule")),
        "upscale --grid": (upscale.grid, d("adapt.grid")),
        "upscale --noise-level": (upscale.noise_level, d("adapt.noise_level")),
        "upscale --preset": (upscale.preset, d("adapt.preset")),
        "upscale --zssr-iterations": (upscale.zssr_iterations, d("zssr.iterations")),
        "upscale --scale": (upscale.scale, d("scale")),
        "upscale --device": (upscale.device, d("device")),
        "estimate-kernel --scale": (estimate.scale, d("scale")),
        "estimate-kernel --device": (estimate.device, d("device")),
        "estimate-kernel (method, seed)": (
            _estimate_settings(estimate),
            ({"method": d("estimate.method")}, d("estimate.seed")),
        ),
        "estimate-kernel --estimator kernelgan (iterations, real_image, seed)": (
            _estimate_settings(kernelgan),
            (
                {"method": "kernelgan", "iterations": d("estimate.iterations"), "real_image": d("estimate.real_image")},
                d("estimate.seed"),
            ),
        ),
    }
    for command in ("degrade", "import-tf", "evaluate"):
        args = ["in", "--out", "o", "--degradation", "g2.0"] if command == "degrade" else ["a", "b"]
        checks[f"{command} --scale"] = (build_parser().parse_args([command, *args]).scale, d("scale"))
    wrong = [
        f"{name}: {value!r}, the schema {setting!r}" for name, (value, setting) in checks.items() if value != setting
    ]
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------------------------------ the schema itself


def _leaves(node: dict, path: tuple = ()):
    """(dotted path, schema) of every setting: the properties of sections, recursively."""
    node = settings._resolve(node)
    if "properties" not in node:
        yield ".".join(path), node
        return
    for key, sub in node["properties"].items():
        yield from _leaves(sub, path + (key,))


def test_settings_reads_the_defaults_the_workflow_fills_in():
    """What the Snakefile's validation fills into an empty config is `settings.defaults()`."""
    from snakemake.utils import validate

    config: dict = {}
    validate(config, str(settings.SCHEMA_FILE))
    assert config == settings.defaults()
    assert settings.SCHEMA_FILE == REPO / "mzsr" / "config.schema.yaml"  # package data (pyproject.toml)
    assert 'validate(config, str(WORKFLOW_DIR / "mzsr" / "config.schema.yaml"))' in (REPO / "Snakefile").read_text()


def test_every_setting_says_what_it_does():
    missing = [
        path
        for path, node in _leaves(settings.schema())
        if not path.startswith("compute.") and not node.get("description", "").strip()
    ]
    assert not missing, f"settings without a description: {', '.join(missing)}"


def test_settings_lookups():
    assert settings.default("estimate.iterations") == 3000
    assert settings.defaults("patches.meta")["store_augmented"] is True
    assert settings.default("data")["train"]["source"] == "div2k:train_hr"  # a section's default, filled in
    assert settings.spec("meta.loss_weights")["enum"] == ["uniform", "annealed"]
    assert settings.defaults("zssr") is not settings.defaults("zssr")  # fresh dicts: callers may change them
    with pytest.raises(KeyError, match="zssr.no_such"):
        settings.spec("zssr.no_such")
    with pytest.raises(KeyError, match="no setting"):
        settings.defaults("zssr", without=("seeed",))
    with pytest.raises(KeyError, match="not a section"):
        settings.defaults("scale")


# ------------------------------------------------------------------------------------ config/config.yaml


def _flat(value, node: dict, path: tuple = ()) -> dict:
    """{dotted path: value} of a config, down to the settings (sections followed by the schema)."""
    node = settings._resolve(node)
    if "properties" in node and isinstance(value, dict):
        out = {}
        for key, sub in value.items():
            out.update(_flat(sub, node["properties"].get(key, {}), path + (key,)))
        return out
    return {".".join(path): value}


def test_the_paper_config_spells_out_the_schemas_defaults():
    schema = settings.schema()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.pop("compute")  # threads and resources of the rules: the workflow's own section
    spelt, defaults = (
        _flat(config, schema),
        _flat({k: v for k, v in settings.defaults().items() if k != "compute"}, schema),
    )
    wrong = [
        f"{k}: config/config.yaml says {spelt[k]!r}, the schema {defaults[k]!r}"
        for k in spelt
        if k in defaults and not same(spelt[k], defaults[k])
    ]
    wrong += [f"{k}: in config/config.yaml, not in the schema" for k in spelt if k not in defaults]
    wrong += [f"{k}: not spelt out in config/config.yaml (default {defaults[k]!r})" for k in defaults if k not in spelt]
    assert not wrong, "\n".join(wrong)


def test_a_stage_refuses_a_setting_it_does_not_know(tmp_path):
    """A typo in a stage's settings is an error before any work, not a silent default."""
    from mzsr import MZSRError
    from mzsr.estimation.estimate import estimate_kernel
    from mzsr.training.meta import meta_train
    from mzsr.training.pretrain import pretrain

    with pytest.raises(MZSRError, match=r"pre-training: unknown setting\(s\) \['stepz'\]; known: \['amp', "):
        pretrain(
            tmp_path / "none.h5", tmp_path / "w.safetensors", {"stepz": 3}, tmp_path / "work", tmp_path / "log.csv"
        )
    with pytest.raises(
        MZSRError, match=r"meta-training: unknown setting\(s\) \['method'\]"
    ):  # the old name of subsampling
        meta_train(
            tmp_path / "w.safetensors",
            [],
            tmp_path / "none.h5",
            tmp_path / "m.safetensors",
            {"method": "direct"},
            tmp_path / "work",
            tmp_path / "log.csv",
        )
    with pytest.raises(MZSRError, match=r"kernel estimation: unknown setting\(s\) \['iters'\]"):
        estimate_kernel(np.zeros((100, 100, 3)), 2, {"iters": 5})
    assert not (tmp_path / "work").exists()
