rule evaluate:
    """Pooled out-of-fold predictions of one method: AUC, AP, accuracy, ROC/PR points."""
    input:
        predictions=method_fold_predictions,
    output:
        metrics=METRICS,
        curves=CURVES,
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
        unpack(compare_inputs),
    output:
        COMPARE,
    log:
        "logs/compare/{dataset}.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        reference=REFERENCE,
        n_folds=N_FOLDS,
        n_boot=N_BOOT,
        seed=lambda w: stage_seed("compare", w.dataset),
    script:
        "../workflow_scripts/compare.py"
