# csmil: cross-scale multiple-instance learning for whole-slide images.
# Run: snakemake --profile profiles/local   (or profiles/slurm on a cluster)
from snakemake.utils import min_version

min_version("9.17")


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
