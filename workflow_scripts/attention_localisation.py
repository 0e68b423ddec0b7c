"""Snakemake adapter: csmil.reporting.attention_maps.attention_localisation."""

from csmil.reporting.attention_maps import attention_localisation
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
attention_localisation(snakemake.params.runs, snakemake.output[0])
