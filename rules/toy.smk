rule make_toy_slide:
    """Generate one toy slide (pyramidal Aperio SVS) and its positive-region mask."""
    output:
        svs=TOY_SLIDE,
        mask=TOY_MASK,
    log:
        "logs/make_toy_slide/{toy_dataset}/{slide}.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cohort=lambda w: slide_row(w.toy_dataset, w.slide)["cohort"],
        label=lambda w: int(slide_row(w.toy_dataset, w.slide)["label"]),
        seed=lambda w: int(slide_row(w.toy_dataset, w.slide)["seed"]),
        size_px=lambda w: int(config["datasets"][w.toy_dataset]["toy"]["size_px"]),
    script:
        "../workflow_scripts/make_toy_slide.py"
