# Helpers for the rules: paths, config sections, input functions, wildcard constraints, which test
# images exist, and each rule's threads, resources, group and benchmark file. The only file of the
# workflow with Python logic; of mzsr it reads only the torch-free mzsr/facts.py (the rules' scripts
# import the rest, inside their own environments).
import hashlib
import importlib.util
import json
import math
import os
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger


def checkout_facts():
    """mzsr/facts.py of this checkout, whichever mzsr the Python running Snakemake has installed or
    imported already (the rules' scripts use this checkout's mzsr too)."""
    spec = importlib.util.spec_from_file_location("mzsr_checkout_facts", WORKFLOW_DIR / "mzsr" / "facts.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


facts = checkout_facts()


def non_finite_key(value, where=""):
    """The dotted key of the first NaN or infinite number (JSON Schema's number type admits them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = non_finite_key(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


# JSON Schema's number type admits NaN and infinity; no setting means them (validated config only)
if (_bad := non_finite_key(config)) is not None:
    raise WorkflowError(f"config {CONFIG_FILES}: {_bad}: NaN or infinity, expected a finite number")


SCALE = config["scale"]
METHODS = config["methods"]
ADAPT_STEPS = sorted(config["adapt"]["steps"])
# Blind methods: MZSR and ZSSR with the kernel estimated from each LR test input (rule estimate_kernel,
# estimate.method: the learned estimator or KernelGAN), beside mzsr and zssr with the true kernel.
KGAN_METHODS = [m for m in METHODS if m.endswith("_kgan")]
if KGAN_METHODS and SCALE not in facts.RANDOM_KERNEL_SCALES:
    raise WorkflowError(
        f"methods {', '.join(KGAN_METHODS)}: kernels are estimated at x2 (and x4 from them), not scale {SCALE}"
    )


# ------------------------------------------------------------------------------------ sources


def skimage_names(source):
    try:
        return facts.skimage_names(source)
    except ValueError as e:
        raise WorkflowError(str(e)) from None


def scan_images(folder, recursive=False):
    """{stem: path} of the images in a folder; two images with one stem are an error."""
    folder = Path(folder)
    found = folder.rglob("*") if recursive else folder.iterdir()
    images = {}
    for p in sorted(found):
        if p.suffix.lower() in facts.IMAGE_SUFFIXES and p.is_file() and not p.name.startswith("."):
            if p.stem in images:
                raise WorkflowError(
                    f"{folder}: {images[p.stem].name} and {p.name} share the name {p.stem!r}; rename one"
                )
            if "/" in p.stem or not p.stem:
                raise WorkflowError(f"{p}: unusable image name")
            images[p.stem] = p
    return images


# ------------------------------------------------------------------------------------ test sets
# name -> {"kind", "source", "images": {stem: path} or None until an archive is extracted}
TEST_SETS = {}
for _name, _source in config["test_sets"].items():
    _kind = facts.source_kind(_source)
    if _kind == "folder":
        if not Path(_source).is_dir():
            logger.warning(
                f"test set {_name}: folder {_source} not found, skipped (put its HR images there to include it)"
            )
            continue
        _images = scan_images(_source)
        if not _images:
            logger.warning(f"test set {_name}: no images in {_source}, skipped")
            continue
    elif _kind == "skimage":
        _images = {n: Path(f"resources/test_sets/{_name}/{n}.png") for n in skimage_names(_source)}
    else:
        _images = None
    TEST_SETS[_name] = {"kind": _kind, "source": _source, "images": _images}
if not TEST_SETS:
    raise WorkflowError(
        f"no test set found: none of {', '.join(config['test_sets'].values())} holds images (config test_sets)"
    )


def degradation_name(spec):
    """A degradation's name in paths, CSVs and the report: the named one, or a kernel file's stem."""
    return Path(spec).stem if spec.lower().endswith(facts.KERNEL_FILE_SUFFIXES) else spec


DEGRADATIONS = {degradation_name(s): s for s in config["degradations"]}
if len(DEGRADATIONS) != len(config["degradations"]):
    raise WorkflowError(f"degradations {config['degradations']}: two of them share a name")

# MZSR evaluates each degradation with the meta-trained model of its subsampling, as the paper does
# ("Direct" and "Bicubic" models); only the models that some degradation needs are trained.
SUBSAMPLING = {name: facts.degradation_subsampling(spec) for name, spec in DEGRADATIONS.items()}
# rk, rk<seed>: each image's own random kernel (KernelGAN's DIV2KRK recipe), drawn by the rules'
# scripts from the seed and the image's stem; DIV2KRK defines it at x2 and x4 only.
RANDOM_KERNEL_DEGRADATIONS = [name for name in DEGRADATIONS if facts.is_random_kernel(name)]
if RANDOM_KERNEL_DEGRADATIONS and SCALE not in facts.RANDOM_KERNEL_SCALES:
    raise WorkflowError(
        f"degradations {', '.join(RANDOM_KERNEL_DEGRADATIONS)}: random kernels exist for scale 2 and 4 "
        f"(KernelGAN's DIV2KRK), not for scale {SCALE}"
    )


def _alternatives(names):
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


wildcard_constraints:
    test_set=_alternatives(TEST_SETS),
    degradation=_alternatives(DEGRADATIONS),
    image=r"[^/]+",
    shard=r"\d+",
    kind="pretrain|meta",
    subsampling="direct|bicubic",
    steps=r"\d+",


def test_images(test_set):
    """{stem: path} of one test set; for an archive set, after its checkpoint has extracted it."""
    info = TEST_SETS[test_set]
    if info["images"] is None:
        folder = checkpoints.test_set_archive.get(test_set=test_set).output[0]
        info["images"] = scan_images(folder, recursive=True)
        if not info["images"]:
            raise WorkflowError(f"test set {test_set}: no images in {info['source']}")
    return info["images"]


def gt_image(wildcards):
    images = test_images(wildcards.test_set)
    if wildcards.image not in images:
        raise WorkflowError(f"test set {wildcards.test_set} has no image {wildcards.image!r}")
    return str(images[wildcards.image])


def kernel_file(wildcards):
    """The kernel file of a file-given degradation (an input, so editing it reruns its jobs)."""
    spec = DEGRADATIONS[wildcards.degradation]
    return [spec] if spec != wildcards.degradation else []


unknown_sets = sorted(set(config["kernel_conventions"]) - set(TEST_SETS))
if unknown_sets:
    raise WorkflowError(f"kernel_conventions names {', '.join(unknown_sets)}, not among the test sets")


def kernel_convention(wildcards):
    """How the test set's LR images are made and its kernels placed: kernel_conventions, else mzsr."""
    return config["kernel_conventions"].get(wildcards.test_set, "mzsr")


def estimator_weights(wildcards):
    """The learned kernel estimator's weights (an input, so retrained weights rerun the estimates)."""
    if config["estimate"]["method"] != "learned":
        return []
    return [str(WORKFLOW_DIR / facts.KERNEL_NET_WEIGHTS)]


# ------------------------------------------------------------------------------------ config sections
# Each rule's params carry only its own section (plus the global scale/method it depends on), so
# that Snakemake's params trigger reruns a stage and what follows it, and nothing upstream.


def section(value):
    """A config section with its keys sorted: Snakemake compares params by repr, so reordering the
    keys of a config file must not look like a change."""
    if isinstance(value, dict):
        return {k: section(value[k]) for k in sorted(value)}
    return value


def pretrain_cfg():
    cfg = {k: v for k, v in config["pretrain"].items() if k != "tf_checkpoint"}
    return section({**cfg, "patch_size": config["patches"]["pretrain"]["patch_size"], "scale": SCALE})


def meta_cfg(subsampling):
    cfg = {k: v for k, v in config["meta"].items() if k != "weights_folder"}  # where models come from, not how
    return section({**cfg, "scale": SCALE, "subsampling": subsampling})


def task_count():
    """Tasks in the shards: tasks.count, else meta.iterations x meta.meta_batch (the release draws fresh
    tasks for every iteration), plus the meta.validation_tasks held aside. Fewer is an error here, at
    planning, rather than after pre-training."""
    meta, count = config["meta"], config["tasks"]["count"]
    needed = meta["iterations"] * meta["meta_batch"]
    if count is not None and count < needed:
        raise WorkflowError(
            f"tasks.count {count} is smaller than the {needed} tasks that meta.iterations "
            f"{meta['iterations']} x meta.meta_batch {meta['meta_batch']} use; raise it or leave it null"
        )
    return (count or needed) + meta["validation_tasks"]


def tasks_cfg(shard):
    """One shard's settings: its share of task_count() (shares differ by at most one task)."""
    cfg = {k: v for k, v in config["tasks"].items() if k not in ("count", "shards")}
    total, shards = task_count(), config["tasks"]["shards"]
    return section({**cfg, "tasks": total * (shard + 1) // shards - total * shard // shards, "scale": SCALE})


def pretrain_work_dir():
    """Pre-training resumes only on the same patches: the patch settings name its folder too."""
    patches = section(config["patches"]["pretrain"])
    return work_dir("pretrain", {"pretrain": facts.training_run_key("pretrain", pretrain_cfg()), "patches": patches})


def meta_work_dir(subsampling):
    """Meta-training resumes only on the same tasks: the task and meta-patch settings name its folder too."""
    meta = facts.training_run_key("meta", meta_cfg(subsampling))
    key = {"meta": meta, "tasks": section(config["tasks"]), "patches": section(config["patches"]["meta"])}
    return work_dir(f"meta_{subsampling}", key)


def work_dir(stage, cfg):
    """Resumable checkpoints live in a folder named after the settings: a changed setting starts fresh."""
    digest = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    return f"resources/work/{stage}/{digest}"


def pretrained_weights():
    if config["pretrain"]["tf_checkpoint"]:
        return "resources/models/pretrained_tf.safetensors"
    return "resources/models/pretrained.safetensors"


def tf_checkpoint_files():
    prefix = config["pretrain"]["tf_checkpoint"]
    return [f"{prefix}.index", f"{prefix}.data-00000-of-00001"]


def shard_paths():
    return expand("resources/tasks/shard={shard}.h5", shard=range(config["tasks"]["shards"]))


# meta.weights_folder: null (train here), "released" (this repository's models/) or a folder
RELEASED_FOLDER = config["meta"]["weights_folder"]
if RELEASED_FOLDER == "released":
    RELEASED_FOLDER = str(WORKFLOW_DIR / "models")


def meta_model(subsampling):
    """The meta-trained model of a subsampling: trained here, or taken from meta.weights_folder."""
    if RELEASED_FOLDER is None:
        return f"resources/models/meta_{subsampling}.safetensors"
    path = Path(RELEASED_FOLDER) / f"{subsampling}_x{SCALE}.safetensors"
    if not path.is_file():
        stems = sorted(p.stem for p in Path(RELEASED_FOLDER).glob("*_x*.safetensors"))
        have = ", ".join(s for s in stems if facts.SR_MODEL_NAME.fullmatch(s)) or "none"  # not kernel_net_x2
        users = ", ".join(d for d, s in SUBSAMPLING.items() if s == subsampling)
        raise WorkflowError(
            f"meta.weights_folder {RELEASED_FOLDER}: no {path.name} for degradation(s) {users} "
            f"(it holds: {have}); drop them from degradations, or set meta.weights_folder: null to train it"
        )
    return str(path)


def meta_weights(wildcards):
    return meta_model(SUBSAMPLING[wildcards.degradation])


def used_meta_models():
    """{subsampling: weights file} of the meta-trained models that the methods use: mzsr the model of
    each degradation's subsampling, mzsr_kgan the Direct one (KernelGAN's kernels are direct)."""
    used = set(SUBSAMPLING.values()) if "mzsr" in METHODS else set()
    used |= {"direct"} if "mzsr_kgan" in METHODS else set()
    return {s: meta_model(s) for s in sorted(used)}


# ------------------------------------------------------------------------------------ compute
# Every rule states its threads, resources and benchmark file with these helpers, from config compute
# (compute.<rule>, else compute.default, whose defaults the schema gives); the per-image rules also
# their cluster group. A profile's or the command line's --set-threads and --set-resources win over
# them, and --default-resources fill only what a rule leaves out, as for any Snakemake rule.


# Rules whose compute settings are another rule's: KernelGAN's estimate_kernel runs as a rule of its own
# (facts.ESTIMATE_RULES), so that only it goes to the GPU partition.
COMPUTE_SECTION = {facts.ESTIMATE_RULES["kernelgan"]: "estimate_kernel"}


def compute(rule, key):
    """compute.<rule>.<key>, else compute.default.<key> (the schema fills in what a config leaves out)."""
    own = config["compute"].get(COMPUTE_SECTION.get(rule, rule)) or {}
    return own.get(key, config["compute"]["default"][key])


TRAINING_WORK = {"pretrain": ("batch_size", "a batch"), "meta_train": ("meta_batch", "a meta-batch")}


def processes_of(name):
    """(processes, nodes) of a training rule (compute.<rule>), checked before any job runs."""
    own = config["compute"].get(name) or {}
    processes, nodes = own.get("processes", 1), own.get("nodes", 1)
    key, what = TRAINING_WORK[name]
    section_name = "pretrain" if name == "pretrain" else "meta"
    if problem := facts.processes_problem(
        processes, nodes, config[section_name][key], f"{what} ({section_name}.{key})"
    ):
        raise WorkflowError(f"config compute.{name}: {problem}")
    return processes, nodes


def threads_of(name):
    """compute.<rule>.threads; a training rule's are per process, so a local run of several
    processes takes that many times as many cores (under SLURM each task gets its own)."""
    threads = compute(name, "threads")
    if name in TRAINING_WORK and not is_cluster_run():
        threads *= processes_of(name)[0]
    return threads


def resources_of(name):
    """Memory (MB) and run time (minutes) of a rule; GPUs for a network rule (facts.GPU_RULES); for a
    per-image rule one image_jobs token, so that the jobs of a group job run one after another.
    A training rule asks for one GPU per process; with several, for that many SLURM tasks over
    compute.<rule>.nodes nodes, one per GPU, which the job starts itself with srun (`mpi` tells the
    executor plugin to run the job without a one-task job step of its own)."""
    resources = {"mem_mb": compute(name, "mem_mb"), "runtime": compute(name, "runtime")}
    if name in facts.GPU_RULES:
        resources["gpu"] = compute(name, "gpu")
    if name in TRAINING_WORK:
        processes, nodes = processes_of(name)
        resources["gpu"] = processes
        if processes > 1:
            resources.update(tasks=processes, tasks_per_gpu=1, nodes=nodes, mpi="srun")
        if os.environ.get("MZSR_SLURM_GPU_FLAG", "").strip().lower() == "gres":  # see slurm/config.yaml
            model = os.environ.get("MZSR_SLURM_GPU_MODEL", "").strip()
            resources.update(gpu=0, gres=f"gpu:{model + ':' if model else ''}{processes // nodes}")
    if name in IMAGE_RULE_GROUPS:
        resources["image_jobs"] = 1
    return resources


def log_path(rule, pattern=""):
    return f"logs/{rule}/{pattern}.log" if pattern else f"logs/{rule}.log"


def benchmark_path(rule, pattern=""):
    """Beside the log: logs/benchmarks/<rule>/<pattern>.tsv for logs/<rule>/<pattern>.log."""
    return f"logs/benchmarks/{rule}/{pattern}.tsv" if pattern else f"logs/benchmarks/{rule}.tsv"


# ------------------------------------------------------------------------------------ cluster groups
# On a cluster (snakemake --profile slurm) the per-image jobs travel in group jobs: one SLURM job
# runs one kind of per-image job for up to cluster.images_per_cpu_job (LR inputs with their bicubic
# baseline; crops) or cluster.images_per_gpu_job (each network method on its own) test images x
# degradations of one test set, one after another (their image_jobs=1). CPU and GPU work never share
# a group, and each network method has its own, so that ZSSR and the pre-trained model do not wait
# for meta-training. Snakemake groups only jobs that need to run, so a rerun submits only what
# changed; local runs ignore groups. cluster.group: false submits every job on its own.
#
# A group's name says which images it holds (<kind>-<test set>-<chunk>), so that the same images
# travel together however often Snakemake regroups (it does at every checkpoint, e.g. after a test
# set's download; with one name per kind and --group-components, Snakemake 9.27 merges its cached
# groups again on each regrouping and runs some jobs twice). A chunk's jobs are not connected in the
# DAG, so its name points to its kind (parent group id), whose --group-components is the chunk size.
IMAGE_RULE_GROUPS = {  # per-image rule -> the kind of group job it travels in
    "lr_image": "inputs",
    "sr_bicubic": "inputs",
    "sr_pretrained": "sr_pretrained",
    "sr_mzsr": "sr_mzsr",
    "sr_zssr": "sr_zssr",
    "estimate_kernel": "estimate_kernel",
    "estimate_kernel_kernelgan": "estimate_kernel_kernelgan",
    "sr_mzsr_kgan": "sr_mzsr_kgan",
    "sr_zssr_kgan": "sr_zssr_kgan",
    "crop": "crop",
}
IMAGE_GROUP_KINDS = {kind: "gpu" if kind in facts.GPU_RULES else "cpu" for kind in IMAGE_RULE_GROUPS.values()}
_IMAGE_UNITS = {}  # test set -> {image: position}


def images_per_job(kind):
    return config["cluster"][f"images_per_{IMAGE_GROUP_KINDS[kind]}_job"]


def image_group(name):
    """The `group:` of a per-image rule: a function naming the job's chunk, or None (cluster.group:
    false). Local runs get no group, as a local dry run lists none."""
    if not config["cluster"]["group"]:
        return None
    kind = IMAGE_RULE_GROUPS[name]
    size = images_per_job(kind)

    def group(wildcards):
        if not is_cluster_run():
            return None
        ts = wildcards.test_set
        if ts not in _IMAGE_UNITS:
            _IMAGE_UNITS[ts] = {image: i for i, image in enumerate(test_images(ts))}
        images = _IMAGE_UNITS[ts]
        unit = list(DEGRADATIONS).index(wildcards.degradation) * len(images) + images[wildcards.image]
        chunk = f"{kind}-{ts}-{unit // size}"
        group_chunk_of(chunk, kind, {k: images_per_job(k) for k in IMAGE_GROUP_KINDS})
        return chunk

    return group


# image_jobs is 1 per submitted job (scope local: not a limit of the whole run). Snakemake sizes a
# group's request (sbatch) and its job step (srun, in the SLURM job) from its jobs' resources within
# this limit: one job's CPUs, memory and GPU, the sum of the run times; --resources image_jobs=N wins.
resource_scopes:
    image_jobs="local",


# ------------------------------------------------------------------------------------ Snakemake internals
# What no public Snakemake interface does, each in one place, tested with Snakemake 9.27.1 and the
# oldest release that pyproject.toml admits (tests/test_snakemake_versions.py). The Snakefile uses
# one more, workflow.overwrite_configfiles: whether --configfile was given, so that it replaces
# config/config.yaml instead of being merged into it (covered by tests/test_workflow.py's dry runs).


def is_cluster_run():
    """Whether jobs go to a cluster: --jobs is set (workflow.nodes, the `_nodes` global resource).
    Snakemake has no public flag for it; dry runs keep --jobs from 9.27 on (older 9.x: None), so a
    dry run with --profile slurm lists the group jobs that a run submits. Local runs get no groups,
    as Snakemake lists none in a local dry run. Covered by tests/test_submissions.py."""
    return workflow.nodes is not None


def group_chunk_of(name, kind, sizes):
    """Group `name` is a chunk of group kind `kind`; every kind's chunk size is its --group-components.

    - workflow.parent_groupids: Snakemake fills it only for string groups with wildcards
      (Rule.expand_group); a group that a function names has no directive for its parent.
    - workflow.group_settings.group_components: --group-components exists on the command line and in
      profiles only, and the chunk sizes come from the config; set while the DAG is built, because
      Snakemake puts its command-line group settings in place after parsing the Snakefile (9.x). A
      --group-components on the command line takes precedence.
    - workflow.register_resource("image_jobs", 1): a global resource's default from the Snakefile;
      --resources in a profile is replaced whole by one on the command line (--resources gpu=1).
    Covered by tests/test_submissions.py and tests/test_slurm.py (group sizes, one job at a time)."""
    workflow.parent_groupids[name] = kind
    settings = workflow.group_settings
    if any(k not in settings.group_components for k in sizes):
        settings.group_components = type(settings.group_components)({**sizes, **settings.group_components})
    if "image_jobs" not in workflow.global_resources:
        workflow.register_resource("image_jobs", 1)


# A failed group job fails all its jobs: Snakemake cannot tell which one failed, and removes the
# outputs of every one of them. The SLURM profile sets --keep-incomplete, so that the images that
# succeeded keep their results and the next run redoes only the failed one. Snakemake then takes
# whatever outputs a failed job leaves for complete, so: every script writes each output file whole
# (temporary file, then rename), and here, before any job runs, the outputs of the jobs that are to
# run are removed (what Snakemake does for each job as it starts), so that a job that fails before
# it starts, or a group member that a killed group job never reached, leaves no result of an
# earlier run that would pass for a current one.
def remove_outputs_of_jobs_to_run():
    """workflow.dag.needrun_jobs(), job.remove_existing_output() through workflow.async_run: Snakemake
    has no hook or flag that clears the outputs of the jobs of a run before the first starts (9.x).
    Covered by tests/test_submissions.py::test_with_keep_incomplete_the_outputs_of_jobs_to_run_go_first."""
    if not workflow.execution_settings.keep_incomplete or workflow.dryrun or workflow.touch:
        return
    jobs = [job for job in workflow.dag.needrun_jobs() if not job.is_norun]
    for job in jobs:
        workflow.async_run(job.remove_existing_output())
    logger.info(f"Outputs of the {len(jobs)} jobs to run removed before the first starts (--keep-incomplete)")


# Snakemake runs the onstart of the main Snakefile only: a Snakefile that uses this workflow as a
# module calls it from its own (`onstart: mzsr.onstart()`, docs/pipeline.md).
onstart:
    remove_outputs_of_jobs_to_run()


# ------------------------------------------------------------------------------------ outputs
JOB = "{test_set}/{degradation}/{image}"
LR_INPUT = f"resources/test_inputs/{JOB}.png"  # a test image degraded (rule lr_image)


STEPPED_METHODS = ("mzsr", "mzsr_kgan")  # one SR image per adaptation step count: <method>-<steps>/


def sr_png(method, steps=None):
    folder = f"{method}-{steps}" if method in STEPPED_METHODS else method
    return f"results/sr/{{test_set}}/{{degradation}}/{folder}/{{image}}.png"


# KernelGAN's estimate of one LR test input: the kernel (MZSR's convention) and a record of the run
# (seconds, iterations, the error against the true kernel where the degradation has one).
ESTIMATED_KERNEL = f"results/kernels/{JOB}.npy"
ESTIMATE_RECORD = f"results/kernels/{JOB}.json"


def estimate_records(wildcards=None):
    """Every test image's estimate record, for the kernel table; none without a KernelGAN method."""
    return each_image(ESTIMATE_RECORD) if KGAN_METHODS else []


def job_csv(method):
    return f"results/metrics/jobs/{{test_set}}/{{degradation}}/{method}/{{image}}.csv"


def each_image(pattern, test_sets=None):
    """`pattern` formatted for every (test set, degradation, image)."""
    out = []
    for ts in TEST_SETS if test_sets is None else test_sets:
        for deg in DEGRADATIONS:
            for image in test_images(ts):
                out.append(pattern.format(test_set=ts, degradation=deg, image=image))
    return out


def job_csvs(wildcards=None, test_sets=None):
    return [path for method in METHODS for path in each_image(job_csv(method), test_sets)]


def crop_inputs(wildcards):
    """What one side-by-side crop shows: GT, bicubic, MZSR after each step count > 0, ZSSR, then the
    KernelGAN methods and, with one of them, the estimated kernel beside the true one (from the
    estimate's record)."""
    w = dict(wildcards)
    shown = {"gt": gt_image(wildcards)}
    if "bicubic" in METHODS:
        shown["bicubic"] = sr_png("bicubic").format(**w)
    for method in ("mzsr", "zssr", "mzsr_kgan", "zssr_kgan"):
        if method not in METHODS:
            continue
        if method in STEPPED_METHODS:
            for n in [s for s in ADAPT_STEPS if s > 0] or ADAPT_STEPS:
                shown[f"{method}-{n}"] = sr_png(method, n).format(**w)
        else:
            shown[method] = sr_png(method).format(**w)
    if KGAN_METHODS:
        shown["estimated_kernel"] = ESTIMATED_KERNEL.format(**w)
        shown["estimate_record"] = ESTIMATE_RECORD.format(**w)
    return shown


def crop_csvs(wildcards):
    return [job_csv(m).format(**dict(wildcards)) for m in METHODS if m != "pretrained"]


SUMMARY_TABLES = [
    "results/metrics/per_image.csv",
    "results/metrics/summary.csv",
    "results/metrics/paper_table.csv",
    "results/metrics/paper_table.md",
]


def image_targets(archives):
    """An input function for the per-image outputs of the test sets that are (not) archives. Kept
    apart so that a test set still to be downloaded does not hold back planning of the others."""

    def targets(wildcards):
        sets = [ts for ts, info in TEST_SETS.items() if (info["kind"] == "archive") == archives]
        return job_csvs(test_sets=sets) + each_image("results/report/crops/{test_set}/{degradation}/{image}.png", sets)

    return targets


# The models are targets of their own, so that a dry run shows (and a run starts) training while a
# test set is still to be downloaded.
USED_META_MODELS = used_meta_models()  # checked here: a released model that is missing stops planning
# Starting from released models (meta.weights_folder), nothing is trained unless the pre-trained
# model is itself a method.
MODELS = [pretrained_weights()] if RELEASED_FOLDER is None or "pretrained" in METHODS else []
if RELEASED_FOLDER is None:
    MODELS += [meta_model(s) for s in sorted(set(SUBSAMPLING.values()))]
ALL_TARGETS = MODELS + SUMMARY_TABLES + ["results/report/psnr_vs_steps.png"]
