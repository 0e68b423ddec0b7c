rule evaluate:
    """Pooled out-of-fold predictions of one method: AUC, AP, accuracy, ROC/PR points."""
    input:
        fold_predictions,
    output:
        metrics=f"{RESULTS}/{{dataset}}/mil/{{method}}/metrics.tsv",
        curves=f"{RESULTS}/{{dataset}}/mil/{{method}}/curves.tsv",
    log:
        "logs/evaluate/{dataset}/{method}.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        n_folds=N_FOLDS,
    script:
        "../workflow_scripts/evaluate.py"


rule compare:
    """Every method against the reference on the patients both scored: DeLong (AUC), paired bootstrap (AP, AUC)."""
    input:
        lambda w: [p for paths in compared_predictions(w).values() for p in paths],
    output:
        f"{RESULTS}/{{dataset}}/compare.tsv",
    log:
        "logs/compare/{dataset}.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        predictions=compared_predictions,
        reference=REFERENCE,
        n_folds=N_FOLDS,
        n_boot=N_BOOT,
        seed=lambda w: stage_seed("compare", w.dataset),
    script:
        "../workflow_scripts/compare.py"
