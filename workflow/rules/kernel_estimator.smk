# The learned kernel estimator's training (mzsr.training.kernel_net; config kernel_estimator): one
# small CNN per soft-content fraction (and seed), on the CPU, written as one ensemble with its settings
# and provenance in the file's metadata. Not part of a normal run: name the rule (or its output) as the
# target. The defaults retrain the released models/kernel_net_x2.safetensors, e.g. from the shared
# T91 + BSD200 folder:  snakemake train_kernel_estimator --cores 2 --configfile config/kernel_estimator.yaml
# The blind methods' rule estimate_kernel uses the released weights (copy this output there to use it).


rule train_kernel_estimator:
    input:
        images="resources/data/train",
    output:
        weights="results/models/kernel_net_x2.safetensors",
    params:
        kernel_estimator=section(config["kernel_estimator"]),
    log:
        log_path("train_kernel_estimator"),
    benchmark:
        benchmark_path("train_kernel_estimator")
    threads: threads_of("train_kernel_estimator")
    resources:
        **resources_of("train_kernel_estimator"),
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/train_kernel_estimator.py"
