# The authors' TensorFlow-1 theta_T as a safetensors weights file, in place of pre-training.
import _util

_util.start(snakemake)  # stderr to the job's log, mzsr importable, one-line errors and warnings

from mzsr.files.checkpoints import import_tf_checkpoint, save_weights

prefix = snakemake.params.tf_checkpoint
state = import_tf_checkpoint(prefix)
save_weights(
    snakemake.output[0],
    state,
    {"scale": int(snakemake.params.scale), "degradation": "bicubic", "step": 0, "source": f"tf:{prefix}"},
)
