rule table5:
    """Table 5: every method on the toy cohorts (AUC and AP per cohort, their mean)."""
    input:
        table5_metrics(),
    output:
        csv=f"{RESULTS}/tables/table5.csv",
        md=f"{RESULTS}/tables/table5.md",
    log:
        "logs/table5.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        metrics=lambda w: {
            ds: {m: metrics_file(ds, m) for m in METHODS}
            for ds in toy_cohorts().values()
        },
        methods=METHODS,
        cohorts=toy_cohorts(),
    script:
        "../workflow_scripts/table5.py"


rule comparison_tables:
    """Tables 1-3: every method, and the CS-MIL ablations, against the reference per dataset."""
    input:
        [compare_file(ds) for ds in DATASETS],
    output:
        table1_csv=report(
            f"{RESULTS}/tables/table1.csv",
            caption="../report/table1.rst",
            category="Tables",
            labels={"table": "Table 1"},
        ),
        table1_md=f"{RESULTS}/tables/table1.md",
        table2_csv=report(
            f"{RESULTS}/tables/table2.csv",
            caption="../report/table2.rst",
            category="Tables",
            labels={"table": "Table 2"},
        ),
        table2_md=f"{RESULTS}/tables/table2.md",
        table3_csv=report(
            f"{RESULTS}/tables/table3.csv",
            caption="../report/table3.rst",
            category="Tables",
            labels={"table": "Table 3"},
        ),
        table3_md=f"{RESULTS}/tables/table3.md",
    log:
        "logs/comparison_tables.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        compare={ds: compare_file(ds) for ds in DATASETS},
        methods=COMPARED,
        variants=config["mil"].get("variants", {}),
        bag_mode=config["mil"]["bag_mode"],
        reference=REFERENCE,
        n_boot=N_BOOT,
    script:
        "../workflow_scripts/comparison_tables.py"


rule table4:
    """Table 4: patients, slides, patches and bags of every dataset's cross-validation."""
    input:
        splits=[f"{RESULTS}/{ds}/splits.tsv" for ds in DATASETS],
        predictions=[
            p for ds in DATASETS for p in fold_files(ds, REFERENCE, "predictions.tsv")
        ],
    output:
        csv=report(
            f"{RESULTS}/tables/table4.csv",
            caption="../report/table4.rst",
            category="Tables",
            labels={"table": "Table 4"},
        ),
        md=f"{RESULTS}/tables/table4.md",
    log:
        "logs/table4.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        datasets={
            ds: {
                "splits": f"{RESULTS}/{ds}/splits.tsv",
                "predictions": fold_files(ds, REFERENCE, "predictions.tsv"),
                "slides": SAMPLES[ds].groupby("patient_id").size().to_dict(),
            }
            for ds in DATASETS
        },
        n_test_bags=config["mil"]["n_test_bags"],
    script:
        "../workflow_scripts/table4.py"


rule table6:
    """Table 6: parameters (run's feature size and 2048-d), peak training memory, time per epoch."""
    input:
        [
            p
            for ds in DATASETS
            for m in COMPARED
            for name in ("model.pt", "history.tsv")
            for p in fold_files(ds, m, name)
        ],
    output:
        csv=report(
            f"{RESULTS}/tables/table6.csv",
            caption="../report/table6.rst",
            category="Tables",
            labels={"table": "Table 6"},
        ),
        md=f"{RESULTS}/tables/table6.md",
    log:
        "logs/table6.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=2000,
        runtime=5,
    params:
        runs={
            ds: {
                m: {
                    "models": fold_files(ds, m, "model.pt"),
                    "histories": fold_files(ds, m, "history.tsv"),
                    "benchmarks": [
                        f"results/benchmarks/train_mil/{ds}/{m}/fold{f}.tsv"
                        for f in range(N_FOLDS)
                    ],
                }
                for m in COMPARED
            }
            for ds in DATASETS
        },
    script:
        "../workflow_scripts/table6.py"
