"""Slides: opening a whole-slide image, its tissue mask, co-centred tiling and the patch store.

The first stage of the workflow (rule file ``rules/tiling.smk``). Coordinates are level-0
pixels everywhere; scales are physical (µm/px), never a pyramid level index.
"""
