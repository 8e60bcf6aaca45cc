# MZSR: Meta-Transfer Learning for Zero-Shot Super-Resolution (Soh et al., CVPR 2020), end to end.
#
#   snakemake --cores 2 --configfile config/demo.yaml      # two-core CPU demo (scikit-image photos)
#   snakemake --cores 8 --resources gpu=1                   # the paper's settings (config/config.yaml)
#   snakemake --report report.html                          # after a run: tables, plot, crops
#
# A --configfile replaces config/config.yaml instead of being merged into it; whatever it leaves out
# takes the defaults of mzsr/config.schema.yaml (the paper's settings; the mzsr package's too).
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.27")

# This checkout: its config, schema, models and mzsr/facts.py, wherever the run's folder is (a
# workflow used as a module runs in its user's folder: workflow.basedir is theirs).
WORKFLOW_DIR = Path(str(workflow.current_basedir)).resolve()


if not workflow.overwrite_configfiles:

    configfile: str(WORKFLOW_DIR / "config" / "config.yaml")


CONFIG_FILES = ", ".join(map(str, workflow.overwrite_configfiles or ["config/config.yaml"]))
try:
    validate(config, str(WORKFLOW_DIR / "mzsr" / "config.schema.yaml"))
except WorkflowError as e:  # one line naming the config file, the key and the problem
    problem = e.__context__
    where = ".".join(map(str, getattr(problem, "absolute_path", ()))) or "top level"
    raise WorkflowError(f"config {CONFIG_FILES}: {where}: {getattr(problem, 'message', e)}") from None


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/patches.smk"
include: "workflow/rules/tasks.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/meta.smk"
include: "workflow/rules/test_inputs.smk"
include: "workflow/rules/estimate.smk"
include: "workflow/rules/kernel_estimator.smk"
include: "workflow/rules/adapt.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        ALL_TARGETS,
        image_targets(archives=False),
        image_targets(archives=True),
    default_target: True
