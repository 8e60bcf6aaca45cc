"""Every setting defined once: the pipeline's config schema, mzsr/config.schema.yaml.

The Snakefile validates configs against that file (and fills in what a config leaves out from its
defaults); the package reads the same defaults here, so that the library, the `mzsr` command and the
workflow cannot drift apart. Each stage's dict (PRETRAIN_DEFAULTS, META_DEFAULTS, ZSSR_DEFAULTS,
KERNELGAN_DEFAULTS, ADAPT_DEFAULTS) is its section's defaults, less what the stage is not given and
plus the few settings it takes from elsewhere, as the workflow passes them (workflow/rules/common.smk);
tests/test_settings.py checks both, key by key.

    defaults("zssr")                  # {"variant": "original", "iterations": 3000, ...}
    defaults("patches.meta")          # a nested section
    default("estimate.iterations")    # 3000
    spec("meta.loss_weights")         # the schema of one setting: type, default, description
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

SCHEMA_FILE = Path(__file__).with_name("config.schema.yaml")


@cache
def _schema() -> dict:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(SCHEMA_FILE.read_text(encoding="utf-8"), Loader=loader)


def schema() -> dict:
    """The whole JSON schema (a copy)."""
    return copy.deepcopy(_schema())


def _resolve(node: dict) -> dict:
    """A schema node with its local "$ref" ("#/$defs/...") merged in; the node's own keys win."""
    while "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"{SCHEMA_FILE.name}: only local references are supported, not {ref!r}")
        target = _schema()
        for part in ref[2:].split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def spec(path: str = "") -> dict:
    """The schema of a setting or section by its dotted path ("" = the whole config), references
    resolved (a copy)."""
    node = _resolve(_schema())
    keys = path.split(".") if path else []
    for i, key in enumerate(keys):
        properties = node.get("properties", {})
        if key not in properties:
            raise KeyError(f"{SCHEMA_FILE.name}: no setting {'.'.join(keys[: i + 1])!r}")
        node = _resolve(properties[key])
    return copy.deepcopy(node)


def _filled(node: dict, value):
    """`value` with the defaults of an object's properties filled in, as the workflow's validation does."""
    if isinstance(value, dict) and "properties" in node:
        for key, sub in node["properties"].items():
            sub = _resolve(sub)
            if key not in value and "default" in sub:
                value[key] = _filled(sub, copy.deepcopy(sub["default"]))
            elif key in value:
                value[key] = _filled(sub, value[key])
    return value


def default(path: str):
    """One setting's default (a section's: with its settings' defaults filled in); KeyError if it has none."""
    node = spec(path)
    if "default" not in node:
        raise KeyError(f"{SCHEMA_FILE.name}: {path!r} has no default")
    return _filled(node, copy.deepcopy(node["default"]))


def defaults(path: str = "", without=()) -> dict:
    """{setting: default} of a section (its settings that have one, nested sections filled in), less
    the settings named in `without`. A fresh dict on every call."""
    node = spec(path)
    if "properties" not in node:
        raise KeyError(f"{SCHEMA_FILE.name}: {path!r} is a setting, not a section")
    unknown = set(without) - set(node["properties"])
    if unknown:
        raise KeyError(f"{SCHEMA_FILE.name}: {path or 'the config'} has no setting(s) {sorted(unknown)}")
    return {k: v for k, v in _filled(node, {}).items() if k not in without}


def with_defaults(cfg: dict | None, stage_defaults: dict, stage: str) -> dict:
    """`stage_defaults` updated with `cfg`; a key the stage does not know is an error (a typo would
    otherwise train or estimate silently with the default)."""
    from mzsr import MZSRError

    cfg = dict(cfg or {})
    unknown = set(cfg) - set(stage_defaults)
    if unknown:
        raise MZSRError(f"{stage}: unknown setting(s) {sorted(unknown)}; known: {sorted(stage_defaults)}")
    return {**stage_defaults, **cfg}
