"""Snakemake adapter: csmil.encoders.embedding.embed_slide."""

from csmil.encoders.embedding import embed_slide
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
embed_slide(
    snakemake.input.patches,
    dict(zip(snakemake.params.scales, snakemake.input.encoders, strict=True)),
    snakemake.output[0],
    batch_size=snakemake.params.batch_size,
    slide_id=snakemake.wildcards.slide,
    num_threads=snakemake.threads,
)
