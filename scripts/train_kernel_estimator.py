# The learned kernel estimator's training (mzsr.training.kernel_net.train, config kernel_estimator) on
# the training images: one network per soft-content fraction (and seed), on the CPU, written as one
# ensemble with its settings and provenance (the images' count and digest, each member's final
# training kernel error, seconds, machine) in the file's metadata.
import _util

_util.start(snakemake)  # stderr to the job's log, mzsr importable, one-line errors and warnings

import json
import sys

import torch

from mzsr.training.kernel_net import compare_with_release, train

torch.set_num_threads(max(1, int(snakemake.threads)))  # kernel_estimator.threads, when set, while training
cfg = dict(snakemake.params.kernel_estimator)
print(f"training on the CPU from {snakemake.input.images}: {json.dumps(cfg, sort_keys=True)}", file=sys.stderr)
metadata = train(snakemake.input.images, snakemake.output.weights, cfg, log=lambda line: print(line, file=sys.stderr))
print(json.dumps(metadata["provenance"], indent=1), file=sys.stderr)
print(compare_with_release(snakemake.output.weights), file=sys.stderr)
