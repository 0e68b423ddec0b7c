rule tile_slide:
    """Tissue mask, 20x tile grid and co-centred 20x/10x/5x patches of one slide."""
    input:
        slide=slide_file,
    output:
        PATCHES,
    log:
        "logs/tile_slide/{dataset}/{slide}.log",
    benchmark:
        "results/benchmarks/tile_slide/{dataset}/{slide}.tsv"
    conda:
        "../envs/csmil.yaml"
    threads: config["tiling"]["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        patch_px=config["tiling"]["patch_px"],
        patch_codec=config["tiling"]["patch_codec"],
        jpeg_quality=config["tiling"]["jpeg_quality"],
        tissue_threshold=config["tiling"]["tissue_threshold"],
        mask_mpp=config["tiling"]["mask_mpp"],
        mpp=slide_mpp,
    script:
        "../workflow_scripts/tile_slide.py"


rule slide_qc:
    """Per-slide quality control of a dataset: tiles, tissue, MPP source, levels read."""
    input:
        stores=dataset_patch_stores,
    output:
        report(
            SLIDE_QC,
            caption="../report/slide_qc.rst",
            category="Quality control",
            labels={"dataset": "{dataset}"},
        ),
    log:
        "logs/slide_qc/{dataset}.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        excluded=excluded_slides,
    script:
        "../workflow_scripts/slide_qc.py"
