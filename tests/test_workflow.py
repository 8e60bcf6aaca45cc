"""The Snakemake workflow: dry runs of both configs, an end-to-end micro run, and what a change reruns.

Snakemake runs as a subprocess in a temporary folder (its working directory), so nothing lands in
the repository. The end-to-end run (tests/micro.yaml) takes about a minute on two cores.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import run_snakemake

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
MICRO = REPO / "tests" / "micro.yaml"
CSV_COLUMNS = ["test_set", "degradation", "method", "steps", "image", "psnr", "ssim", "seconds", "redegradation_psnr"]
STAGES = {
    "train_images",
    "patches",
    "task_shard",
    "pretrain",
    "meta_train",
    "lr_image",
    "sr_bicubic",
    "sr_pretrained",
    "sr_mzsr",
    "sr_zssr",
    "aggregate",
    "plot_steps",
    "crop",
    "all",
}


def check(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


def planned_jobs(workdir: Path, *args: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job a dry run plans, parsed from Snakemake's job listing."""
    out = check(run_snakemake(workdir, "-n", *args))
    jobs: list[tuple[str, dict[str, str]]] = []
    for line in out.splitlines():
        if m := re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line):
            jobs.append((m.group(1), {}))
        elif (m := re.match(r"^\s+wildcards: (.*)$", line)) and jobs:
            jobs[-1][1].update(kv.split("=", 1) for kv in m.group(1).split(", "))
    return jobs


def write_test_image(path: Path, seed: int, size: int = 64) -> None:
    """A small natural-looking RGB image (a crop of a scikit-image photo)."""
    import skimage.data

    photo = skimage.data.astronaut()
    rng = np.random.default_rng(seed)
    y, x = rng.integers(0, photo.shape[0] - size, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo[y : y + size, x : x + size]).save(path)


# ------------------------------------------------------------------------------------ dry runs


def test_demo_config_dry_run(tmp_path):
    jobs = planned_jobs(tmp_path, "--configfile", str(REPO / "config" / "demo.yaml"))
    rules = Counter(rule for rule, _ in jobs)
    assert STAGES <= set(rules)
    assert rules["meta_train"] == 2  # g2.0 (direct) and gb1.3 (bicubic) each get their model
    images = {w["image"] for rule, w in jobs if rule == "sr_mzsr"}
    train = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())["data"]["train"]["source"]
    assert images == {"astronaut", "chelsea"} and not images & set(train.split(":")[1].split(","))


def test_paper_config_dry_run(tmp_path):
    """The default config: DIV2K download, the paper's settings; a missing test-set folder is skipped."""
    for i in range(2):
        write_test_image(tmp_path / "resources" / "benchmarks" / "Set5" / f"img{i}.png", seed=i)
    proc = run_snakemake(tmp_path, "-n")
    out = check(proc)
    assert "test set BSD100: folder resources/benchmarks/BSD100 not found, skipped" in out
    jobs = planned_jobs(tmp_path)
    rules = Counter(rule for rule, _ in jobs)
    assert STAGES - {"crop", "aggregate", "plot_steps", "all"} <= set(rules)
    assert rules["test_set_archive"] == 1  # DIV2K valid HR, listed once downloaded
    assert rules["task_shard"] == 8 and rules["meta_train"] == 2  # 8 shards of specs serve direct and bicubic
    assert rules["sr_mzsr"] == 2 * 4  # Set5 stand-in: 2 images x 4 degradations (DIV2K valid follows later)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert config["data"]["train"]["source"] == "div2k:train_hr"
    assert (
        config["pretrain"]["steps"],
        config["meta"]["iterations"],
        config["patches"]["pretrain"]["patch_size"],
        config["patches"]["meta"]["patch_size"],
        config["meta"]["meta_batch"],
    ) == (500000, 100000, 96, 64, 5)


def test_tf_checkpoint_replaces_pretraining(tmp_path):
    prefix = tmp_path / "ckpt" / "Pretrained"
    prefix.parent.mkdir()
    for suffix in (".index", ".data-00000-of-00001"):
        Path(f"{prefix}{suffix}").write_bytes(b"stand-in")
    config = yaml.safe_load(MICRO.read_text())
    config["pretrain"]["tf_checkpoint"] = str(prefix)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    write_test_image(tmp_path / "test_images" / "tiny" / "a.png", seed=0)
    rules = {rule for rule, _ in planned_jobs(tmp_path, "--configfile", "cfg.yaml")}
    assert "import_tf" in rules and "pretrain" not in rules
    assert ("patches", {"kind": "pretrain"}) not in planned_jobs(tmp_path, "--configfile", "cfg.yaml")


def test_a_test_set_in_kernelgans_convention_is_degraded_the_kernelgan_way(tmp_path):
    """kernel_conventions: {tiny: kernelgan}: the set's LR images are made as `mzsr degrade
    --kernel-convention kernelgan` makes them (KernelGAN's kernel_shift), the other sets' as before;
    a name that is no test set is an error."""
    from mzsr.cli import main

    write_test_image(tmp_path / "test_images" / "tiny" / "a.png", seed=0)
    config = yaml.safe_load(MICRO.read_text())
    config.update(degradations=["rk"], kernel_conventions={"tiny": "kernelgan"})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    check(run_snakemake(tmp_path, "resources/test_inputs/tiny/rk/a.png", "--cores", "1", "--configfile", "cfg.yaml"))
    for convention in ("kernelgan", "mzsr"):
        out = tmp_path / convention
        args = ["degrade", str(tmp_path / "test_images" / "tiny"), "--out", str(out), "--degradation", "rk"]
        assert main([*args, "--kernel-convention", convention]) == 0
    made = np.asarray(Image.open(tmp_path / "resources" / "test_inputs" / "tiny" / "rk" / "a.png"))
    assert np.array_equal(made, np.asarray(Image.open(tmp_path / "kernelgan" / "a.png")))
    assert not np.array_equal(made, np.asarray(Image.open(tmp_path / "mzsr" / "a.png")))
    config["kernel_conventions"] = {"DIV2KRK": "kernelgan"}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path, "-n", "--configfile", "bad.yaml")
    assert (
        proc.returncode != 0
        and "kernel_conventions names DIV2KRK, not among the test sets" in proc.stdout + proc.stderr
    )


def test_config_schema_rejects_unknown_keys(tmp_path):
    config = yaml.safe_load(MICRO.read_text())
    config["meta"]["iteratons"] = 5
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path, "-n", "--configfile", "cfg.yaml")
    assert proc.returncode != 0
    assert "iteratons" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------ micro run


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    """A finished run of tests/micro.yaml in a temporary folder."""
    workdir = tmp_path_factory.mktemp("micro")
    for i, name in enumerate(("a", "b")):
        write_test_image(workdir / "test_images" / "tiny" / f"{name}.png", seed=10 + i)
    shutil.copy(MICRO, workdir / "micro.yaml")
    check(run_snakemake(workdir, "--cores", "2", "--configfile", "micro.yaml"))
    return workdir


@pytest.mark.slow
def test_training_on_two_processes_locally(micro_run, tmp_path):
    """compute.<rule>.processes: 2 reruns nothing; forced, the training rules start two processes
    with torchrun (gloo on this CPU) and give the one-process weights."""
    config = yaml.safe_load(MICRO.read_text())
    for rule in ("pretrain", "meta_train"):
        config["compute"][rule] = {"processes": 2}
    (micro_run / "two.yaml").write_text(yaml.safe_dump(config))
    assert planned_jobs(micro_run, "--configfile", "two.yaml") == []  # a compute setting: nothing to redo
    copy = tmp_path / "copy"
    shutil.copytree(micro_run, copy, symlinks=True)
    shutil.rmtree(copy / "resources" / "work")  # no checkpoints: train afresh
    check(
        run_snakemake(
            copy,
            "--cores",
            "2",
            "--configfile",
            "two.yaml",
            "--forcerun",
            "pretrain",
            "meta_train",
            "--until",
            "meta_train",
        )
    )
    from mzsr.files.checkpoints import load_weights

    for name, tolerance in (("pretrained", 1e-6), ("meta_direct", 1e-5)):
        one, _ = load_weights(micro_run / "resources" / "models" / f"{name}.safetensors")
        two, _ = load_weights(copy / "resources" / "models" / f"{name}.safetensors")
        assert max(float((one[k] - two[k]).abs().max()) for k in one) <= tolerance, name
    for log in ("pretrain.log", "meta_train/direct.log"):
        text = (copy / "logs" / log).read_text()
        assert "starting 2 training processes" in text and "torch.distributed.run --standalone" in text, text[-2000:]


@pytest.mark.slow
def test_micro_run_metrics(micro_run):
    per_image = pd.read_csv(micro_run / "results" / "metrics" / "per_image.csv")
    assert list(per_image.columns) == CSV_COLUMNS
    assert per_image["psnr"].map(math.isfinite).all() and (per_image["psnr"] > 10).all()
    assert per_image["ssim"].between(-1, 1).all() and (per_image["seconds"] >= 0).all()
    assert set(per_image["test_set"]) == {"tiny"} and set(per_image["degradation"]) == {"g2.0"}
    for image in ("a", "b"):
        rows = per_image[per_image["image"] == image]
        assert sorted(rows.loc[rows["method"] == "mzsr", "steps"]) == [0, 1, 10]
        assert set(rows["method"]) == {"bicubic", "pretrained", "mzsr", "zssr"}
        assert rows.loc[rows["method"] == "zssr", "steps"].tolist() == [5]  # the configured iterations
    summary = pd.read_csv(micro_run / "results" / "metrics" / "summary.csv")
    assert list(summary.columns) == [
        "test_set",
        "degradation",
        "method",
        "steps",
        "psnr",
        "ssim",
        "seconds",
        "redegradation_psnr",
        "images",
    ]
    assert (summary["images"] == 2).all() and len(summary) == 6
    mean = per_image[(per_image["method"] == "mzsr") & (per_image["steps"] == 10)]["psnr"].mean()
    assert summary.query("method == 'mzsr' and steps == 10")["psnr"].item() == pytest.approx(mean, abs=1e-3)
    table = pd.read_csv(micro_run / "results" / "metrics" / "paper_table.csv")
    assert list(table.columns) == [
        "degradation",
        "test_set",
        "Bicubic",
        "ZSSR",
        "Pre-trained",
        "MZSR(0)",
        "MZSR(1)",
        "MZSR(10)",
    ]
    assert re.fullmatch(r"\d+\.\d\d/\d\.\d{4}", table.loc[0, "MZSR(10)"])
    assert "| g2.0 | tiny |" in (micro_run / "results" / "metrics" / "paper_table.md").read_text()
    for name in ("a", "b"):
        sr = Image.open(micro_run / "results" / "sr" / "tiny" / "g2.0" / "mzsr-10" / f"{name}.png")
        assert sr.size == (64, 64)
        assert (micro_run / "results" / "report" / "crops" / "tiny" / "g2.0" / f"{name}.png").is_file()


@pytest.mark.slow
def test_micro_run_draws_the_tasks_the_run_uses(micro_run):
    import h5py

    config = yaml.safe_load(MICRO.read_text())
    meta = config["meta"]
    shards = sorted((micro_run / "resources" / "tasks").glob("shard=*.h5"))
    assert len(shards) == config["tasks"]["shards"]
    sizes = []
    for path in shards:
        with h5py.File(path) as g:
            sizes.append(g["patches"].shape[0])
    assert sum(sizes) == meta["iterations"] * meta["meta_batch"] + meta["validation_tasks"]  # 2 x 2 + 2
    with h5py.File(micro_run / "resources" / "patches" / "meta.h5") as f:
        assert f.attrs["store_augmented"] and f.attrs["reject_flat"] and f["patches"].shape[0] % 8 == 0


def test_too_small_a_task_count_fails_at_planning(tmp_path):
    write_test_image(tmp_path / "test_images" / "tiny" / "a.png", seed=0)
    config = yaml.safe_load(MICRO.read_text())
    config["tasks"]["count"] = 3
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path, "-n", "--configfile", "cfg.yaml")
    assert proc.returncode != 0
    assert (
        "tasks.count 3 is smaller than the 4 tasks that meta.iterations 2 x meta.meta_batch 2 use; "
        "raise it or leave it null"
    ) in proc.stdout + proc.stderr


def read_report(path: Path) -> tuple[str, dict[str, dict]]:
    """(the front page's HTML, {result path: its entry, with the embedded file as `content`}) of a
    `snakemake --report` page, read from the JavaScript variables that hold them."""
    import base64
    import json

    page = path.read_text()
    front = json.loads(re.search(r"var workflow_desc = (\".*?\");\n", page).group(1))
    results = json.loads(re.search(r"var results = (\{.*?\});\n", page).group(1))
    for entry in results.values():
        entry["content"] = base64.b64decode(entry["data_uri"].split("base64,", 1)[1]).decode("utf-8", "replace")
    return front, results


def check_report(workdir: Path, configfile: str) -> tuple[str, dict[str, dict]]:
    """The report renders without a reStructuredText message, names no absolute path and shows the
    two results tables in the page (HTML, not a CSV download), beside the plot and the crops."""
    check(run_snakemake(workdir, "--configfile", configfile, "--report", "report.html"))
    front, results = read_report(workdir / "report.html")
    for text in [front] + [entry["caption"] for entry in results.values()]:
        assert "System Message" not in text and "system-message" not in text, text
    for entry in results.values():
        assert str(REPO) not in entry["job_properties"]["params"] and str(workdir) not in entry["caption"]
    for table in ("paper_table", "summary"):
        entry = results[f"results/report/{table}.html"]
        assert entry["mime_type"] == "text/html" and "<table" in entry["content"]
    assert "results/report/psnr_vs_steps.png" in results
    assert any(path.startswith("results/report/crops/") for path in results)
    return front, results


@pytest.mark.slow
def test_micro_report(micro_run):
    front, results = check_report(micro_run, "micro.yaml")
    assert "<strong>Models</strong>, trained by this run" in front and "2 iterations of meta-batch" in front
    paper = results["results/report/paper_table.html"]["content"]
    assert (
        "<th>MZSR(10)</th>" in paper
        and "meta-trained by this run" in results["results/report/paper_table.html"]["caption"]
    )


def _changed_config(workdir: Path, section: str, key: str, value) -> str:
    config = yaml.safe_load((workdir / "micro.yaml").read_text())
    config[section][key] = value
    (workdir / "changed.yaml").write_text(yaml.safe_dump(config))
    return "changed.yaml"


@pytest.mark.slow
@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        # the task count follows iterations x meta-batch
        ("meta", "iterations", 3, {"task_shard", "meta_train", "sr_mzsr", "aggregate", "crop", "plot_steps", "all"}),
        ("meta", "outer_lr", 0.001, {"meta_train", "sr_mzsr", "aggregate", "crop", "plot_steps", "all"}),
        ("zssr", "iterations", 6, {"sr_zssr", "aggregate", "crop", "plot_steps", "all"}),
        ("tasks", "seed", 1, {"task_shard", "meta_train", "sr_mzsr", "aggregate", "crop", "plot_steps", "all"}),
        # a default spelled out changes nothing (the schema fills it in either way)
        ("adapt", "grad_precision", "float32", set()),
        ("adapt", "grad_precision", "bfloat16", {"sr_mzsr", "aggregate", "crop", "plot_steps", "all"}),
        ("meta", "grad_precision", "bfloat16", {"meta_train", "sr_mzsr", "aggregate", "crop", "plot_steps", "all"}),
    ],
)
def test_changed_setting_reruns_its_stage_and_what_follows(micro_run, section, key, value, expected):
    assert planned_jobs(micro_run, "--configfile", "micro.yaml") == []  # finished and up to date
    jobs = planned_jobs(micro_run, "--configfile", _changed_config(micro_run, section, key, value))
    assert {rule for rule, _ in jobs} == expected


@pytest.mark.slow
def test_added_test_image_plans_only_its_jobs(micro_run):
    new = micro_run / "test_images" / "tiny" / "c.png"
    write_test_image(new, seed=99)
    try:
        jobs = planned_jobs(micro_run, "--configfile", "micro.yaml")
    finally:
        new.unlink()
    per_image = [(rule, w) for rule, w in jobs if "image" in w]
    assert {w["image"] for _, w in per_image} == {"c"}
    assert Counter(rule for rule, _ in per_image) == Counter(
        {"lr_image": 1, "sr_bicubic": 1, "sr_pretrained": 1, "sr_mzsr": 1, "sr_zssr": 1, "crop": 1}
    )
    assert {rule for rule, w in jobs if "image" not in w} == {"aggregate", "plot_steps", "all"}


# ------------------------------------------------------------------------------------ released models


def _released_config(tmp_path: Path, degradations: list[str], **changes) -> str:
    config = yaml.safe_load(MICRO.read_text())
    config.update(methods=["bicubic", "mzsr"], degradations=degradations, **changes)
    config["meta"]["weights_folder"] = "released"  # the repository's models/
    (tmp_path / "released.yaml").write_text(yaml.safe_dump(config))
    return "released.yaml"


@pytest.mark.slow
def test_pipeline_from_the_released_models_trains_nothing_and_names_them(tmp_path):
    """Also the blind degradation rk: each test image's own random kernel (direct, the released Direct
    model); and blind SR: the learned estimator (the default) estimates each LR image's kernel, which
    MZSR (mzsr_kgan) and ZSSR (zssr_kgan) then use, always with direct subsampling."""
    import scipy.ndimage

    from mzsr.degradation.degrade import degrade, to_uint8
    from mzsr.degradation.kernels import random_kernel, random_kernel_rng
    from mzsr.evaluation.metrics import modcrop

    write_test_image(tmp_path / "test_images" / "tiny" / "a.png", seed=3, size=128)
    cfg = _released_config(tmp_path, ["g2.0", "rk"], estimate={"method": "learned"})
    config = yaml.safe_load((tmp_path / cfg).read_text())
    config["methods"] += ["mzsr_kgan", "zssr_kgan"]
    (tmp_path / cfg).write_text(yaml.safe_dump(config))
    rules = {rule for rule, _ in planned_jobs(tmp_path, "--configfile", cfg)}
    assert rules == {
        "lr_image",
        "sr_bicubic",
        "sr_mzsr",
        "estimate_kernel",
        "sr_mzsr_kgan",
        "sr_zssr_kgan",
        "aggregate",
        "plot_steps",
        "crop",
        "all",
    }
    check(run_snakemake(tmp_path, "--cores", "2", "--configfile", cfg))
    hr = modcrop(np.asarray(Image.open(tmp_path / "test_images" / "tiny" / "a.png").convert("RGB")), 2) / 255.0
    lr = np.asarray(Image.open(tmp_path / "resources" / "test_inputs" / "tiny" / "rk" / "a.png"))
    np.testing.assert_array_equal(lr, to_uint8(degrade(hr, random_kernel(random_kernel_rng(0, "a"), 2), 2, "direct")))
    per_image = pd.read_csv(tmp_path / "results" / "metrics" / "per_image.csv").set_index(
        ["degradation", "method", "steps"]
    )
    # the re-degradation check uses the image's own kernel: MZSR's SR re-degraded matches the LR closely
    assert per_image.loc[("rk", "mzsr", 10), "redegradation_psnr"].item() > 40
    table = (tmp_path / "results" / "metrics" / "paper_table.md").read_text()
    # the model by its name: two checkouts of the same run give the same table
    assert "- MZSR, direct subsampling: released direct_x2, 700 meta-iterations" in table and str(REPO) not in table
    # blind SR: a centred kernel per LR image, its rows beside the true-kernel ones, its error in a table
    for deg in ("g2.0", "rk"):
        k = np.load(tmp_path / "results" / "kernels" / "tiny" / deg / "a.npy")
        assert k.ndim == 2 and k.shape[0] % 2 == 1 and k.shape[0] == k.shape[1] and (k >= 0).all()
        assert k.sum() == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(scipy.ndimage.center_of_mass(k), np.array(k.shape) // 2, atol=0.01)
        assert sorted(per_image.loc[(deg, "mzsr_kgan")].index) == [0, 1, 10]
        assert per_image.loc[(deg, "zssr_kgan")].index.tolist() == [5]  # the configured ZSSR iterations
        for method in ("mzsr_kgan", "zssr_kgan"):
            assert per_image.loc[(deg, method), "psnr"].map(math.isfinite).all()
        assert (tmp_path / "results" / "sr" / "tiny" / deg / "mzsr_kgan-10" / "a.png").is_file()
        assert (tmp_path / "results" / "report" / "crops" / "tiny" / deg / "a.png").is_file()
    kernels = pd.read_csv(tmp_path / "results" / "metrics" / "kernels.csv")
    assert list(kernels.columns) == [
        "test_set",
        "degradation",
        "image",
        "method",
        "iterations",
        "seconds",
        "kernel_error",
    ]
    assert (kernels["method"] == "learned").all() and (kernels["iterations"] == 0).all()
    assert kernels["degradation"].tolist() == ["g2.0", "rk"]
    assert kernels["kernel_error"].map(math.isfinite).all() and (kernels["kernel_error"] > 0).all()
    assert (kernels["seconds"] > 0).all()
    paper = pd.read_csv(tmp_path / "results" / "metrics" / "paper_table.csv")
    assert list(paper.columns) == [
        "degradation",
        "test_set",
        "Bicubic",
        "MZSR(0)",
        "MZSR(1)",
        "MZSR(10)",
        "ZSSR, estimated kernel",
        "MZSR(0), estimated kernel",
        "MZSR(1), estimated kernel",
        "MZSR(10), estimated kernel",
    ]
    assert "| degradation | method | kernel error | seconds | iterations | images |" in table
    assert re.search(r"^\| rk \| learned \| \d\.\d{5} \| [\d.]+ \| 0 \| 1 \|$", table, re.M), table
    front, results = check_report(tmp_path, cfg)
    assert "<strong>Models</strong>: not trained by this run" in front and "trained by this run:" not in front
    assert "<strong>Blind methods</strong>" in front
    assert "the released models of\nthis workflow" in results["results/report/paper_table.html"]["caption"]
    assert "<table" in results["results/report/kernels.html"]["content"]


def test_estimate_defaults_are_the_kernelgan_release():
    """The config's estimate section defaults to the learned estimator and, for KernelGAN, to the release's
    settings (and the paper config spells them out)."""
    from mzsr.estimation.kernelgan import KERNELGAN_DEFAULTS

    schema = yaml.safe_load((REPO / "mzsr" / "config.schema.yaml").read_text())
    defaults = {k: v["default"] for k, v in schema["properties"]["estimate"]["properties"].items()}
    release = {
        "iterations": 3000,
        "real_image": False,
        "crop": 64,
        "g_channels": 64,
        "g_structure": [7, 5, 3, 1, 1, 1],
        "d_channels": 64,
        "d_layers": 7,
        "d_kernel": 7,
        "lr": 2e-4,
        "beta1": 0.5,
        "n_filtering": 40,
    }
    assert defaults == {
        "method": "learned",
        "iterations": KERNELGAN_DEFAULTS["iterations"],
        "real_image": KERNELGAN_DEFAULTS["real_image"],
        "seed": 0,
        **{k: KERNELGAN_DEFAULTS[k] for k in release if k not in ("iterations", "real_image")},
    }
    assert {k: v for k, v in KERNELGAN_DEFAULTS.items() if k != "method"} == release
    assert yaml.safe_load((REPO / "config" / "config.yaml").read_text())["estimate"] == defaults
    assert {"mzsr_kgan", "zssr_kgan"} <= set(schema["properties"]["methods"]["items"]["enum"])


def test_a_model_not_released_stops_planning_with_one_line(tmp_path):
    write_test_image(tmp_path / "test_images" / "tiny" / "a.png", seed=3)
    proc = run_snakemake(tmp_path, "-n", "--configfile", _released_config(tmp_path, ["g2.0", "gb1.3"]))
    assert proc.returncode != 0
    assert (
        f"meta.weights_folder {REPO / 'models'}: no bicubic_x2.safetensors for degradation(s) gb1.3 (it holds: "
        "direct_x2); drop them from degradations, or set meta.weights_folder: null to train it"
    ) in proc.stdout + proc.stderr


def test_table2_config_plans_the_papers_table_from_the_released_models(tmp_path):
    for i in range(2):
        write_test_image(tmp_path / "resources" / "benchmarks" / "Set5" / f"img{i}.png", seed=i)
    table2 = str(REPO / "config" / "table2.yaml")
    jobs = planned_jobs(tmp_path, "--configfile", table2, "--config", "degradations=[g0.2,g2.0,ani]")
    rules = Counter(rule for rule, _ in jobs)
    assert set(rules) == {"lr_image", "sr_bicubic", "sr_zssr", "sr_mzsr", "aggregate", "plot_steps", "crop", "all"}
    assert rules["sr_mzsr"] == 2 * 3
    proc = run_snakemake(tmp_path, "-n", "--configfile", table2)  # gb1.3 waits for the released Bicubic model
    assert proc.returncode != 0 and "no bicubic_x2.safetensors for degradation(s) gb1.3" in proc.stdout + proc.stderr


def job_resources(out: str) -> dict[str, dict[str, str]]:
    """{rule: its first job's threads and resources} from a dry run's job listing."""
    found: dict[str, dict[str, str]] = {}
    rule = None
    for line in out.splitlines():
        if m := re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line):
            rule = m.group(1) if m.group(1) not in found else None
            if rule:
                found[rule] = {"threads": "1"}
        elif rule and (m := re.match(r"^\s+threads: (\d+)$", line)):
            found[rule]["threads"] = m.group(1)
        elif rule and (m := re.match(r"^\s+resources: (.*)$", line)):
            found[rule].update(kv.split("=", 1) for kv in m.group(1).split(", "))
    return found


def test_every_rule_takes_its_compute_settings_and_the_command_line_wins(tmp_path):
    """Each rule's threads: and resources: (common.smk's threads_of, resources_of): compute.<rule>,
    else compute.default, whose keys a config leaves out come from the schema; --set-threads and
    --set-resources win over both, key by key."""
    config = yaml.safe_load((REPO / "config" / "demo_released.yaml").read_text())
    config["compute"] = {"default": {"threads": 2}, "sr_zssr": {"runtime": 7}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    out = check(
        run_snakemake(
            tmp_path,
            "-n",
            "--cores",
            "4",
            "--configfile",
            "c.yaml",
            "--set-threads",
            "sr_mzsr=3",
            "--set-resources",
            "sr_mzsr:mem_mb=1234",
        )
    )
    jobs = job_resources(out)
    assert {k: jobs["sr_bicubic"][k] for k in ("threads", "mem_mb", "runtime", "image_jobs")} == {
        "threads": "2",
        "mem_mb": "4000",
        "runtime": "60",
        "image_jobs": "1",
    }
    assert "gpu" not in jobs["sr_bicubic"] and "image_jobs" not in jobs["aggregate"]
    assert {k: jobs["sr_zssr"][k] for k in ("threads", "mem_mb", "runtime", "gpu")} == {
        "threads": "2",
        "mem_mb": "4000",
        "runtime": "7",
        "gpu": "1",
    }
    assert {k: jobs["sr_mzsr"][k] for k in ("threads", "mem_mb", "runtime", "gpu")} == {
        "threads": "3",
        "mem_mb": "1234",
        "runtime": "60",
        "gpu": "1",
    }
