"""Snakemake adapter: csmil.toy.generator.make_toy_slide."""

from csmil.runtime import setup_logging
from csmil.toy.generator import make_toy_slide

setup_logging(snakemake.log[0])
make_toy_slide(
    snakemake.output.svs,
    snakemake.output.mask,
    cohort=snakemake.params.cohort,
    label=snakemake.params.label,
    seed=snakemake.params.seed,
    size_px=snakemake.params.size_px,
)
