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
