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
