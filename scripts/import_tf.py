import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)
# The authors' TensorFlow-1 theta_T as a safetensors weights file, in place of pre-training.
import _util  # noqa: F401  (import path of mzsr)

from mzsr.checkpoints import import_tf_checkpoint, save_weights

prefix = snakemake.params.tf_checkpoint
state = import_tf_checkpoint(prefix)
save_weights(
    snakemake.output[0],
    state,
    {"scale": int(snakemake.params.scale), "degradation": "bicubic", "step": 0, "source": f"tf:{prefix}"},
)
