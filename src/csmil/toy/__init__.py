"""Toy cohorts (paper §5.3): generated pyramidal slides with known positive regions.

The source of the default run (rule file ``rules/toy.smk``): patterns drawn on a canvas, written
as Aperio-layout SVS files that OpenSlide opens, with a positive-region mask beside each slide.
"""
