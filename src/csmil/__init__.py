"""csmil: cross-scale multiple-instance learning for whole-slide images.

The library under the csmil Snakemake workflow. Every workflow step is a function here and a
``csmil`` sub-command (see :mod:`csmil.cli`).
"""

__version__ = "0.1.0"

#: Scales in the order used everywhere (feature stacks, attention columns, tables).
SCALES: tuple[str, ...] = ("20x", "10x", "5x")

#: Field of view of each scale, in pixels at 20x (0.5 µm/px): 128, 256 and 512 µm.
SCALE_FIELD_PX_20X: dict[str, int] = {"20x": 256, "10x": 512, "5x": 1024}

#: Micrometres per pixel at 20x, the reference magnification.
MPP_20X: float = 0.5
