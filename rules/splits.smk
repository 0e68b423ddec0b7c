rule make_splits:
    """Patient-level, label-stratified folds; patients keep their fold as the cohort grows.

    The ledger holds every patient ever assigned: the job reads it and updates it in place, so
    a patient keeps its fold when slides or patients are added (or removed and added back).
    """
    output:
        splits=SPLITS,
        ledger=update(SPLITS_LEDGER),
    log:
        "logs/make_splits/{dataset}.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        patients=split_patients,
        n_folds=N_FOLDS,
        seed=lambda w: stage_seed("splits", w.dataset),
    script:
        "../workflow_scripts/make_splits.py"
