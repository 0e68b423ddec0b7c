rule predict:
    """Score new slides (predict/{batch}/) with every fold model of a trained method; no retraining."""
    input:
        unpack(predict_inputs),
    output:
        predictions=f"{PREDICT}/predictions.tsv",
        attention=directory(f"{PREDICT}/attention"),
        maps=report(
            directory(f"{PREDICT}/maps"),
            patterns=["{slide}.png"],
            caption="../report/predict_maps.rst",
            category="Predictions",
            subcategory="{batch}",
            labels={"slide": "{slide}"},
        ),
        work=directory(f"{PREDICT}/work"),
    log:
        "logs/predict/{dataset}/{method}/{batch}.log",
    benchmark:
        "results/benchmarks/predict/{dataset}/{method}/{batch}.tsv"
    wildcard_constraints:
        batch=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    conda:
        "../envs/csmil.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    params:
        n_bags=config["mil"]["n_test_bags"],
        tissue_threshold=config["tiling"]["tissue_threshold"],
        mask_mpp=config["tiling"]["mask_mpp"],
        batch_size=config["embedding"]["batch_size"],
        seed=lambda w: stage_seed("predict", w.dataset, w.method, w.batch),
    script:
        "../workflow_scripts/predict.py"
