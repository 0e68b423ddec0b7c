"""Snakemake adapter: csmil.inputs.write_listing of the job's named inputs."""

from csmil.inputs import write_listing
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
write_listing(snakemake.output[0], snakemake.input.items())
