rule evaluate:
    """Pooled out-of-fold predictions of one method: AUC, AP, accuracy, ROC/PR points."""
    input:
        fold_predictions,
    output:
        metrics=f"{RESULTS}/{{dataset}}/mil/{{method}}/metrics.tsv",
        curves=f"{RESULTS}/{{dataset}}/mil/{{method}}/curves.tsv",
    params:
        n_folds=N_FOLDS,
    log:
        "logs/evaluate/{dataset}/{method}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../workflow_scripts/evaluate.py"
