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
    """One MIL method on every cross-validation fold of a dataset, in one job: train, select,
    test, export attention. The folds train together as one stacked model where the model
    allows it (csmil.mil.foldbatch; the numbers of training them one by one)."""
    input:
        cohort=COHORT_LISTING,
        splits=SPLITS,
    output:
        model=method_folds(FOLD_MODEL),
        history=method_folds(FOLD_HISTORY),
        predictions=method_folds(FOLD_PREDICTIONS),
        attention=method_folds(FOLD_ATTENTION),
    log:
        "logs/train_mil/{dataset}/{method}.log",
    benchmark:
        METHOD_BENCHMARK
    conda:
        "../envs/csmil.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=240,
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
                "n_val_bags",
                "bag_mode",
                "standardise",
            )
        },
        n_clusters=config["clustering"]["n_clusters"],
        seeds=lambda w: [
            stage_seed("mil", w.dataset, w.method, f) for f in range(N_FOLDS)
        ],
    script:
        "../workflow_scripts/train_mil.py"
