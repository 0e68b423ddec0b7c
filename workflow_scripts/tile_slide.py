"""Snakemake adapter: csmil.slides.tiling.tile_slide (a bad slide's reason goes to its log)."""

import logging

from csmil.runtime import setup_logging
from csmil.slides.errors import SlideError
from csmil.slides.tiling import tile_slide

setup_logging(snakemake.log[0])
try:
    tile_slide(
        snakemake.input.slide,
        snakemake.output[0],
        patch_px=snakemake.params.patch_px,
        tissue_threshold=snakemake.params.tissue_threshold,
        mask_mpp=snakemake.params.mask_mpp,
        slide_id=snakemake.wildcards.slide,
        mpp_override=snakemake.params.mpp,
        codec=snakemake.params.patch_codec,
        jpeg_quality=snakemake.params.jpeg_quality,
        num_threads=snakemake.threads,
    )
except SlideError as err:
    logging.getLogger("csmil").error("%s", err)
    raise
