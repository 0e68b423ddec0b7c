rule make_splits:
    """Patient-level, label-stratified folds; patients keep their fold as the cohort grows."""
    output:
        f"{RESULTS}/{{dataset}}/splits.tsv",
    log:
        "logs/make_splits/{dataset}.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        patients=lambda w: SAMPLES[w.dataset][["patient_id", "label"]]
        .drop_duplicates()
        .sort_values("patient_id")
        .to_dict("records"),
        n_folds=N_FOLDS,
        seed=lambda w: stage_seed("splits", w.dataset),
    script:
        "../workflow_scripts/make_splits.py"
