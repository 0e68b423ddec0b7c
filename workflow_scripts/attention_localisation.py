"""Snakemake adapter: csmil.attention_maps.attention_localisation."""

from csmil.attention_maps import attention_localisation
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
attention_localisation(snakemake.params.runs, snakemake.output[0])
