# csmil: cross-scale multiple-instance learning for whole-slide images.
# Run: snakemake --profile profiles/local   (or profiles/slurm on a cluster)
import os

from snakemake.utils import min_version

min_version("9.17")

# HDF5's POSIX file locks fail or hang on some shared cluster filesystems (NFS, Lustre,
# BeeGFS). Jobs read stores without locks and write each store to a temporary file of their
# own; jobs started here or by SLURM inherit this. Set it to TRUE beforehand to keep locks.
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/toy.smk"
include: "rules/tiling.smk"
include: "rules/encoders.smk"
include: "rules/embedding.smk"
include: "rules/phenotypes.smk"
include: "rules/splits.smk"
include: "rules/training.smk"
include: "rules/evaluation.smk"
include: "rules/tables.smk"
include: "rules/figures.smk"
include: "rules/predict.smk"


# Rules that take seconds run where Snakemake runs, not as cluster jobs.
localrules:
    all,
    make_splits,
    evaluate,
    compare,
    comparison_tables,
    table4,
    table5,
    table6,
    roc_pr,
    scale_attention,
    attention_localisation,


rule all:
    default_target: True
    input:
        all_targets(),
