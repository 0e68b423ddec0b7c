"""Snakemake adapter: csmil.slides.tiling.tile_slide. A slide that cannot be tiled has its
reason written to the job's log and to a failure record beside its would-be patch store,
which the slide QC table reports (csmil.slides.qc)."""

import logging

from csmil.runtime import setup_logging
from csmil.slides.errors import SlideError
from csmil.slides.qc import clear_failure, record_failure
from csmil.slides.tiling import tile_slide

setup_logging(snakemake.log[0])
store = snakemake.output[0]
try:
    tile_slide(
        snakemake.input.slide,
        store,
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
    record_failure(store, f"{err.problem}. {err.fix}")
    raise
except Exception as err:
    record_failure(store, f"tiling raised {type(err).__name__}: {err}; see the job's log")
    raise
clear_failure(store)
