rule embed_slide:
    """Every patch of a slide at every scale through that scale's encoder."""
    input:
        patches=PATCHES,
        encoders=slide_encoders,
    output:
        FEATURES,
    log:
        "logs/embed_slide/{dataset}/{slide}.log",
    benchmark:
        "results/benchmarks/embed_slide/{dataset}/{slide}.tsv"
    conda:
        "../envs/csmil.yaml"
    threads: config["embedding"]["threads"]
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    params:
        scales=SCALES,
        batch_size=config["embedding"]["batch_size"],
    script:
        "../workflow_scripts/embed_slide.py"
