rule train_mil:
    """One MIL model on one cross-validation fold: train, select, test, export attention."""
    input:
        unpack(dataset_patient_inputs),
        splits=f"{RESULTS}/{{dataset}}/splits.tsv",
    output:
        model=f"{RESULTS}/{{dataset}}/mil/{{method}}/fold{{fold}}/model.pt",
        history=f"{RESULTS}/{{dataset}}/mil/{{method}}/fold{{fold}}/history.tsv",
        predictions=f"{RESULTS}/{{dataset}}/mil/{{method}}/fold{{fold}}/predictions.tsv",
        attention=f"{RESULTS}/{{dataset}}/mil/{{method}}/fold{{fold}}/attention.tsv",
    log:
        "logs/train_mil/{dataset}/{method}/fold{fold}.log",
    benchmark:
        "results/benchmarks/train_mil/{dataset}/{method}/fold{fold}.tsv"
    conda:
        "../envs/csmil.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=120,
    params:
        patients=patient_feature_map,
        phenotypes=patient_phenotype_map,
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
