"""Conda per rule: every rule's environment file exists, parses and is pinned on conda-forge; it
provides every import of the script the rule runs; the network rules get a GPU-capable PyTorch, the
data and aggregation rules light environments; `snakemake --lint` reports nothing.

What a script needs is read from its source with `ast`, without running it: every `import` of the
script, followed into the modules of this repository that it imports (scripts/_util.py, mzsr/*),
where it counts what runs on import plus what the script uses: a module's top-level imports, and
the imports inside the functions and classes the script imports from it or calls on it (and those
they refer to in turn). Third-party import names map to conda packages in IMPORT_TO_CONDA; an
import that is neither there nor in the standard library fails the test, which names it.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import yaml

from conftest import run_snakemake

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
# import name -> the conda-forge packages that provide it (any one will do)
IMPORT_TO_CONDA = {
    "numpy": {"numpy"},
    "scipy": {"scipy"},
    "PIL": {"pillow"},
    "h5py": {"h5py"},
    "skimage": {"scikit-image"},
    "tqdm": {"tqdm"},
    "yaml": {"pyyaml"},
    "torch": {"pytorch", "pytorch-gpu", "pytorch-cpu"},
    "safetensors": {"safetensors"},
    "pandas": {"pandas"},
    "matplotlib": {"matplotlib", "matplotlib-base"},
}
# Rule files whose rules prepare data or aggregate results: their environments stay light.
LIGHT_RULE_FILES = {"data.smk", "patches.smk", "tasks.smk", "test_inputs.smk", "aggregate.smk", "report.smk"}
ALL = None  # "every function and class of the module"


# ------------------------------------------------------------------------------------ the rules


@dataclass(frozen=True)
class RuleInfo:
    name: str
    rule_file: str  # the .smk file that defines it
    env: Path | None
    script: Path | None
    network: bool  # asks for a GPU (resource `gpu`)


@pytest.fixture(scope="module")
def rules(tmp_path_factory) -> list[RuleInfo]:
    """Every rule of the workflow, parsed by Snakemake itself (demo config; skimage test images)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    workdir = tmp_path_factory.mktemp("envs")
    with SnakemakeApi(OutputSettings()) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(configfiles=[REPO / "config" / "demo.yaml"]),
            storage_settings=StorageSettings(),
            snakefile=REPO / "Snakefile",
            workdir=workdir,
        )
        found = []
        for rule in workflow_api._workflow.rules:
            if rule.name == "all":
                continue
            base = Path(rule.basedir)
            found.append(
                RuleInfo(
                    name=rule.name,
                    rule_file=Path(rule.snakefile).name,
                    env=(base / rule.conda_env).resolve() if isinstance(rule.conda_env, str) else None,
                    script=(base / rule.script).resolve() if rule.script else None,
                    network="gpu" in rule.resources,
                )
            )
    assert len(found) > 10
    return found


@cache
def environment(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def packages(env: dict) -> dict[str, str]:
    """{conda package name: version spec} of an environment's dependencies."""
    out = {}
    for dep in env["dependencies"]:
        assert isinstance(dep, str), f"only conda packages expected, got {dep!r}"
        name, _, spec = re.match(r"^([A-Za-z0-9_.\-]+)\s*(([=<>!~].*)?)$", dep.strip()).groups()
        out[name] = spec.strip()
    return out


# ------------------------------------------------------------------------------------ imports


@dataclass
class Parsed:
    """A Python file's imports and references, split by top-level function/class ("unit")."""

    top_imports: list[ast.stmt] = field(default_factory=list)
    top_refs: set[str] = field(default_factory=set)
    unit_imports: dict[str, list[ast.stmt]] = field(default_factory=dict)
    unit_refs: dict[str, set[str]] = field(default_factory=dict)
    attrs: dict[str, set[str]] = field(default_factory=dict)  # name -> attributes used on it


@cache
def parse(path: Path) -> Parsed:
    tree = ast.parse(path.read_text(), filename=str(path))
    parsed = Parsed()

    def scan(nodes, imports: list, refs: set):
        for node in nodes:
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    imports.append(sub)
                elif isinstance(sub, ast.Name):
                    refs.add(sub.id)
                elif isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name):
                    parsed.attrs.setdefault(sub.value.id, set()).add(sub.attr)

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            scan([node], parsed.unit_imports.setdefault(node.name, []), parsed.unit_refs.setdefault(node.name, set()))
            # decorators and default values run at definition time
            scan(node.decorator_list, parsed.top_imports, parsed.top_refs)
        else:
            scan([node], parsed.top_imports, parsed.top_refs)
    return parsed


def local_file(module: str) -> Path | None:
    """The file of a module of this repository that a rule script can import, else None."""
    parts = module.split(".")
    if parts[0] == "mzsr":
        base = REPO.joinpath(*parts)
        path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        return path if path.is_file() else None
    if len(parts) == 1 and (SCRIPTS / f"{module}.py").is_file():  # scripts/ is on a script's sys.path
        return SCRIPTS / f"{module}.py"
    return None


def third_party_imports(script: Path) -> dict[str, set[str]]:
    """{top-level import name outside the standard library: the files that import it} for a script."""
    found: dict[str, set[str]] = {}
    seen: set[tuple[str, str | None]] = set()
    work: list[tuple[Path, str, frozenset[str] | None]] = [(script, "__main__", ALL)]

    def want(module: str, names, via: Path, alias_attrs: set[str] | None = None):
        path = local_file(module)
        if path is None:
            top = module.split(".")[0]
            if top not in sys.stdlib_module_names and top != "__future__":
                found.setdefault(top, set()).add(str(via.relative_to(REPO)))
            return
        if module.startswith("mzsr.") or module == "mzsr":
            work.append((local_file("mzsr"), "mzsr", frozenset()))  # a package's __init__ runs on import
        if names is not ALL and module.startswith("mzsr"):  # `from mzsr import a` where a is a submodule
            for name in names:
                if (sub := local_file(f"{module}.{name}")) is not None:
                    work.append((sub, f"{module}.{name}", ALL))
        work.append((path, module, names if names is ALL else frozenset(names)))

    while work:
        path, module, names = work.pop()
        key = (module, None if names is ALL else ",".join(sorted(names)))
        if key in seen:
            continue
        seen.add(key)
        parsed = parse(path)
        units = set(parsed.unit_imports) if names is ALL else (set(names) | parsed.top_refs) & set(parsed.unit_imports)
        todo = list(units)
        while todo:  # units that the chosen ones refer to
            for ref in parsed.unit_refs[todo.pop()] & set(parsed.unit_imports):
                if ref not in units:
                    units.add(ref)
                    todo.append(ref)
        statements = parsed.top_imports + [s for unit in units for s in parsed.unit_imports[unit]]
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for stmt in statements:
            if isinstance(stmt, ast.Import):
                for alias in stmt.names:
                    if alias.asname is None and "." in alias.name:  # `import a.b` binds a: count all of a.b
                        want(alias.name, ALL, path)
                    else:  # what the module uses of it: attributes of the bound name (none: import for effect)
                        want(alias.name, parsed.attrs.get(alias.asname or alias.name, set()), path)
            else:
                base = stmt.module or ""
                if stmt.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (stmt.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                names = {a.name for a in stmt.names}
                want(base, ALL if "*" in names else names, path)
    return found


# ------------------------------------------------------------------------------------ tests


def test_every_rule_names_an_existing_environment_that_parses(rules):
    for rule in rules:
        assert rule.env is not None, f"rule {rule.name} has no conda: directive"
        assert rule.env.is_file() and rule.env.parent == REPO / "envs", f"rule {rule.name}: {rule.env} is not in envs/"
        env = environment(rule.env)
        assert env["channels"] == ["conda-forge", "nodefaults"], rule.env
        pins = packages(env)
        assert "python" in pins, rule.env
        for name, spec in pins.items():
            assert re.fullmatch(r"=\d+(\.\d+)+", spec.replace(" ", "")), (
                f"{rule.env.name}: {name} is not pinned ({spec!r})"
            )


def test_every_environment_provides_the_imports_of_its_scripts(rules):
    problems = []
    for rule in rules:
        if rule.script is None:
            continue
        provided = set(packages(environment(rule.env)))
        for name, where in sorted(third_party_imports(rule.script).items()):
            if name not in IMPORT_TO_CONDA:
                problems.append(
                    f"{', '.join(sorted(where))} imports {name!r}: add its conda package to IMPORT_TO_CONDA"
                )
            elif not IMPORT_TO_CONDA[name] & provided:
                problems.append(
                    f"rule {rule.name} ({rule.script.name}): {rule.env.name} lacks {name!r} "
                    f"(conda: {' or '.join(sorted(IMPORT_TO_CONDA[name]))}), imported by {', '.join(sorted(where))}"
                )
    assert not problems, "\n".join(dict.fromkeys(problems))


def test_network_rules_get_a_gpu_pytorch_and_data_and_aggregation_rules_light_environments(rules):
    network = {r.name for r in rules if r.network}
    assert {"pretrain", "meta_train", "sr_pretrained", "sr_mzsr", "sr_zssr"} <= network
    for rule in rules:
        pins = packages(environment(rule.env))
        if rule.network:
            assert "pytorch-gpu" in pins, f"rule {rule.name} asks for a GPU but {rule.env.name} has no pytorch-gpu"
        if rule.rule_file in LIGHT_RULE_FILES:
            assert "pytorch-gpu" not in pins, f"rule {rule.name}: {rule.env.name} should stay light (no CUDA PyTorch)"
    assert {r.rule_file for r in rules if r.name in {"aggregate", "plot_steps", "crop"}} <= LIGHT_RULE_FILES
    report_envs = {r.env for r in rules if r.name in {"aggregate", "plot_steps", "crop"}}
    assert all(not {"pytorch", "pytorch-gpu", "pytorch-cpu"} & set(packages(environment(e))) for e in report_envs)


def test_import_analysis_follows_helpers_and_mzsr():
    """The analysis itself: what a script imports through _util and mzsr counts, what it does not use does not."""
    adapt = third_party_imports(SCRIPTS / "sr_mzsr.py")
    assert {"torch", "numpy", "pandas", "PIL"} <= set(adapt)  # mzsr.adaptation, _util.write_rows, mzsr.files.images
    assert "scripts/_util.py" in adapt["pandas"]
    aggregate = third_party_imports(SCRIPTS / "aggregate.py")
    assert "pandas" in aggregate and "torch" not in aggregate  # _util's torch_setup is not used there


@pytest.mark.parametrize("config", [None, "config/demo.yaml", "tests/micro.yaml"])
def test_snakemake_lint_reports_nothing(tmp_path, config):
    if config == "tests/micro.yaml":
        (tmp_path / "test_images" / "tiny").mkdir(parents=True)
        from PIL import Image

        Image.new("RGB", (32, 32)).save(tmp_path / "test_images" / "tiny" / "a.png")
    config_args = ("--configfile", str(REPO / config)) if config else ()
    proc = run_snakemake(tmp_path, "--lint", *config_args, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "Congratulations, your workflow is in a good condition!" in out, out[-4000:]
    assert "Lints for" not in out, out[-4000:]
