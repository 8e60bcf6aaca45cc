"""Every option of the `mzsr` command and every config key with a bad value.

Generated, not hand-listed: the CLI cases come from `build_parser()`'s actions (int/float options get
0, -1, nan, inf and a non-number; options with choices an unknown value; --device a device this
machine lacks), each run in-process: exit status != 0, no traceback, nothing written, and either
argparse's usage error (exit 2, naming the option) or one line `mzsr: error: ...` naming it. The
config cases come from mzsr/config.schema.yaml (a value under each minimum, of the wrong
type, outside each enum or pattern, an empty list where one item is needed), validated in-process as
the Snakefile validates; a few semantic ones (valid keys, values that do not fit together) go
through `snakemake -n`.
"""

from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
import yaml

from mzsr.cli import main
from mzsr.cli.parser import build_parser
from mzsr.files.checkpoints import save_weights
from mzsr.files.images import write_png
from mzsr.network.model import MZSRNet
from conftest import run_snakemake, smooth_image

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "mzsr" / "config.schema.yaml").read_text())
MICRO = yaml.safe_load((REPO / "tests" / "micro.yaml").read_text())

# ------------------------------------------------------------------------------------ the command


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


NUMBERS = ("0", "-1", "nan", "inf", "x")
VALID = {
    ("upscale", "--steps", "0"),
    ("upscale", "--noise-level", "0"),  # generated values that are fine
    ("estimate-kernel", "--seed", "0"),
    ("upscale", "--seed", "0"),
}


def _cli_cases():
    cases = []
    for command, sub in _subparsers(build_parser()).items():
        for action in sub._actions:
            if not action.option_strings or action.nargs == 0 or isinstance(action, argparse._HelpAction):
                continue
            option = action.option_strings[-1]
            if action.choices:
                values = ["bogus"]
            elif action.type in (int, float):
                values = list(NUMBERS)
            elif action.dest == "device":
                values = ["cuda:7", "bogus", "tpu"] + ([] if torch.cuda.is_available() else ["cuda"])
            elif action.dest == "degradation":
                values = ["bogus"]
            else:
                continue  # paths: the file-system cases of tests/test_filesystem.py
            cases += [(command, option, v) for v in values if (command, option, v) not in VALID]
    return cases


CLI_CASES = _cli_cases()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    write_png(root / "lr" / "a.png", smooth_image(28, 32, seed=1))
    torch.manual_seed(0)
    save_weights(root / "w.safetensors", MZSRNet().state_dict(), {"scale": 2, "degradation": "direct", "step": 0})
    return root


def _command(root: Path, command: str) -> list[str]:
    out = str(root / "out")
    return {
        "degrade": ["degrade", str(root / "lr"), "--out", out, "--degradation", "g0.2"],
        "upscale": [
            "upscale",
            str(root / "lr"),
            "--out",
            out,
            "--weights",
            str(root / "w.safetensors"),
            "--degradation",
            "g0.2",
            "--steps",
            "1",
            "--device",
            "cpu",
        ],
        "import-tf": ["import-tf", str(root / "no-checkpoint"), str(root / "out" / "w.safetensors")],
        "evaluate": ["evaluate", str(root / "lr"), str(root / "lr"), "--csv", str(root / "out" / "m.csv")],
        "estimate-kernel": [
            "estimate-kernel",
            str(root / "lr"),
            "--out",
            out,
            "--estimator",
            "kernelgan",
            "--iterations",
            "1",
            "--device",
            "cpu",
        ],
    }[command]


def test_the_sweep_covers_every_numeric_and_choice_option():
    options = {(c, o) for c, o, _ in CLI_CASES}
    assert {
        ("degrade", "--scale"),
        ("upscale", "--steps"),
        ("upscale", "--zssr-iterations"),
        ("upscale", "--noise-level"),
        ("upscale", "--device"),
        ("upscale", "--schedule"),
        ("upscale", "--grid"),
        ("upscale", "--preset"),
        ("upscale", "--method"),
        ("import-tf", "--subsampling"),
        ("evaluate", "--scale"),
    } <= options


@pytest.mark.parametrize("command, option, value", CLI_CASES, ids=[f"{c} {o} {v}" for c, o, v in CLI_CASES])
def test_bad_option_value(base, capsys, command, option, value):
    args = _command(base, command)
    if option in args:  # replace the base command's own value
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    try:
        rc = main(args)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc not in (0, None) and "Traceback" not in err, err
    lines = err.strip().splitlines()
    if rc == 2:  # argparse: usage line(s), then `mzsr <command>: error: argument --x: ...`
        assert re.match(rf"mzsr {command}: error: argument (\S+/)?{re.escape(option)}", lines[-1]), lines
    else:
        assert rc == 1 and len(lines) == 1 and lines[0].startswith("mzsr: error: "), lines
        assert option in lines[0] or f"{value!r}" in lines[0] or "device" in lines[0], lines[0]
    assert not (base / "out").exists()


# ------------------------------------------------------------------------------------ the config schema


def _resolve(spec: dict) -> dict:
    """Follow local references ("#/$defs/compute", "#/$defs/compute/properties/threads")."""
    while "$ref" in spec:
        target = SCHEMA
        for key in spec["$ref"].removeprefix("#/").split("/"):
            target = target[key]
        spec = target
    return spec


def _bad_values(spec: dict) -> list[tuple[str, object]]:
    """(what, value) pairs the schema must refuse for one key."""
    spec = _resolve(spec)
    types = spec.get("type", [])
    types = [types] if isinstance(types, str) else types
    out = []
    if "enum" in spec:
        out.append(("unknown value", "bogus"))
    if "integer" in types:
        out.append(("not a number", "many"))
        out.append(("fraction", 1.5))
    if "number" in types:
        out.append(("not a number", "many"))
    if "minimum" in spec:
        out.append(("below the minimum", spec["minimum"] - 1))
    if "exclusiveMinimum" in spec:
        out.append(("at the exclusive minimum", spec["exclusiveMinimum"]))
    if "boolean" in types:
        out.append(("not a boolean", "yes"))
    if "string" in types and ("pattern" in spec or "minLength" in spec):
        out.append(("malformed string", "" if "minLength" in spec else "!!"))
    if "array" in types or spec.get("type") == "array":
        out.append(("not a list", "g2.0"))
        if spec.get("minItems"):
            out.append(("empty list", []))
        if "items" in spec:
            out += [(f"item {what}", [value]) for what, value in _bad_values(spec["items"]) if what != "not a list"]
    if "object" in types and "properties" in spec:
        out.append(("unknown key", {"no_such_key": 1}))
    return out


def _config_cases():
    cases = []

    def walk(spec, path):
        spec = _resolve(spec)
        if spec.get("type") == "object" and "properties" in spec:
            if path:
                cases.append((path, "unknown key", {"no_such_key": 1}))
            for key, sub in spec["properties"].items():
                walk(sub, path + (key,))
            return
        cases.extend((path, what, value) for what, value in _bad_values(spec))

    walk(SCHEMA, ())
    walk(SCHEMA["$defs"]["compute"], ("compute", "default"))
    return cases


CONFIG_CASES = _config_cases()


def _set(config: dict, path: tuple, value) -> dict:
    config = copy.deepcopy(config)
    node = config
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return config


@pytest.mark.parametrize("path, what, value", CONFIG_CASES, ids=[f"{'.'.join(p)} {w}" for p, w, _ in CONFIG_CASES])
def test_bad_config_value_is_refused_by_the_schema(path, what, value):
    errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(_set(MICRO, path, value)))
    assert errors, f"{'.'.join(path)} = {value!r} was accepted"
    # the error that the Snakefile turns into its one line names this key (or a key below it)
    assert any(
        tuple(map(str, e.absolute_path))[: len(path)] == path
        or (e.validator == "additionalProperties" and tuple(e.absolute_path) == path[:-1])
        for e in errors
    ), [(list(e.absolute_path), e.message) for e in errors]


def test_the_config_sweep_reaches_every_section():
    sections = {p[0] for p, _, _ in CONFIG_CASES}
    assert {
        "scale",
        "device",
        "data",
        "degradations",
        "methods",
        "patches",
        "tasks",
        "pretrain",
        "meta",
        "adapt",
        "zssr",
        "estimate",
        "report",
        "compute",
    } <= sections
    assert len(CONFIG_CASES) > 150


# ------------------------------------------------------------------------------------ semantic: snakemake -n

SEMANTIC = [
    (
        "task pool smaller than iterations x meta-batch",
        lambda c: c.update(tasks={**c["tasks"], "count": 3}, meta={**c["meta"], "iterations": 2, "meta_batch": 2}),
        r"tasks\.count 3 is smaller than the 4 tasks that meta\.iterations 2 x meta\.meta_batch 2 use",
    ),
    (
        "a NaN learning rate (the schema's number type admits NaN)",
        lambda c: c["pretrain"].update(lr=float("nan")),
        r"config \S*cfg\.yaml: pretrain\.lr: NaN or infinity, expected a finite number",
    ),
    (
        "an infinite noise level",
        lambda c: c["adapt"].update(noise_level=float("inf")),
        r"adapt\.noise_level: NaN or infinity, expected a finite number",
    ),
]


@pytest.mark.parametrize("name, change, problem", SEMANTIC, ids=[s[0] for s in SEMANTIC])
def test_values_that_do_not_fit_together_fail_the_dry_run(tmp_path, name, change, problem):
    config = copy.deepcopy(MICRO)
    change(config)
    write_png(tmp_path / "test_images" / "tiny" / "x.png", smooth_image(40, 48))
    for k in ("a", "b"):
        (tmp_path / k).mkdir()
        np.save(tmp_path / k / "k.npy", np.full((5, 5), 1 / 25))
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path, "-n", "--configfile", "cfg.yaml", timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and re.search(problem, out), out[-2000:]
    assert "Traceback (most recent call last)" not in out  # Snakemake may list the rule's location, not Python's
    assert not (tmp_path / "resources").exists()
