rule table5:
    """Table 5: every method on the toy cohorts (AUC and AP per cohort, their mean)."""
    input:
        unpack(table5_inputs),
    output:
        csv=fill(TABLE, table="table5.csv"),
        md=fill(TABLE, table="table5.md"),
    log:
        "logs/table5.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        methods=METHODS,
        cohorts=toy_cohorts(),
    script:
        "../workflow_scripts/table5.py"


rule comparison_tables:
    """Tables 1-3: every method, and the CS-MIL ablations, against the reference per dataset."""
    input:
        unpack(comparison_tables_inputs),
    output:
        table1_csv=report(
            fill(TABLE, table="table1.csv"),
            caption="../report/table1.rst",
            category="Tables",
            labels={"table": "Table 1"},
        ),
        table1_md=fill(TABLE, table="table1.md"),
        table2_csv=report(
            fill(TABLE, table="table2.csv"),
            caption="../report/table2.rst",
            category="Tables",
            labels={"table": "Table 2"},
        ),
        table2_md=fill(TABLE, table="table2.md"),
        table3_csv=report(
            fill(TABLE, table="table3.csv"),
            caption="../report/table3.rst",
            category="Tables",
            labels={"table": "Table 3"},
        ),
        table3_md=fill(TABLE, table="table3.md"),
    log:
        "logs/comparison_tables.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        methods=COMPARED,
        variants=config["mil"]["variants"],
        bag_mode=config["mil"]["bag_mode"],
        reference=REFERENCE,
        n_boot=N_BOOT,
    script:
        "../workflow_scripts/comparison_tables.py"


rule table4:
    """Table 4: patients, slides, patches and bags of every dataset's cross-validation."""
    input:
        unpack(table4_inputs),
    output:
        csv=report(
            fill(TABLE, table="table4.csv"),
            caption="../report/table4.rst",
            category="Tables",
            labels={"table": "Table 4"},
        ),
        md=fill(TABLE, table="table4.md"),
    log:
        "logs/table4.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        slides={ds: patient_slide_counts(ds) for ds in DATASETS},
        n_test_bags=config["mil"]["n_test_bags"],
    script:
        "../workflow_scripts/table4.py"


rule table6:
    """Table 6: parameters (run's feature size and 2048-d), peak training memory, time per epoch."""
    input:
        unpack(table6_inputs),
    output:
        csv=report(
            fill(TABLE, table="table6.csv"),
            caption="../report/table6.rst",
            category="Tables",
            labels={"table": "Table 6"},
        ),
        md=fill(TABLE, table="table6.md"),
    log:
        "logs/table6.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=2000,
        runtime=5,
    script:
        "../workflow_scripts/table6.py"
