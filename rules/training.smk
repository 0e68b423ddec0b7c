rule list_cohort:
    """Every patient's feature stores and phenotype table, as one listing for MIL training."""
    input:
        unpack(cohort_inputs),
    output:
        COHORT_LISTING,
    log:
        "logs/list_cohort/{dataset}.log",
    localrule: True
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../workflow_scripts/list_inputs.py"


rule train_mil:
    """One MIL model on one cross-validation fold: train, select, test, export attention."""
    input:
        cohort=COHORT_LISTING,
        splits=SPLITS,
    output:
        model=FOLD_MODEL,
        history=FOLD_HISTORY,
        predictions=FOLD_PREDICTIONS,
        attention=FOLD_ATTENTION,
    log:
        "logs/train_mil/{dataset}/{method}/fold{fold}.log",
    benchmark:
        FOLD_BENCHMARK
    conda:
        "../envs/csmil.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=120,
    params:
        options=lambda w: config["mil"]["variants"].get(w.method, {}),
        n_folds=N_FOLDS,
        train={
            k: config["mil"][k]
            for k in (
                "epochs",
                "lr",
                "weight_decay",
                "accumulate",
                "n_test_bags",
                "bag_mode",
                "standardise",
            )
        },
        n_clusters=config["clustering"]["n_clusters"],
        seed=lambda w: stage_seed("mil", w.dataset, w.method, w.fold),
    script:
        "../workflow_scripts/train_mil.py"
