rule roc_pr:
    """ROC and precision-recall curves of every method on one dataset (paper Fig. 3)."""
    input:
        unpack(roc_pr_inputs),
    output:
        report(
            ROC_PR,
            caption="../report/roc_pr.rst",
            category="Figures",
            subcategory="ROC and PR curves",
            labels={"dataset": "{dataset}"},
        ),
    log:
        "logs/roc_pr/{dataset}.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        reference=REFERENCE,
    script:
        "../workflow_scripts/roc_pr.py"


rule scale_attention:
    """Per-scale attention of the reference: summary, paired Wilcoxon tests, box plots (Fig. 6)."""
    input:
        unpack(scale_attention_inputs),
    output:
        summary=report(
            fill(TABLE, table="scale_attention.csv"),
            caption="../report/scale_attention_tables.rst",
            category="Tables",
            labels={"table": "scale attention"},
        ),
        tests=report(
            fill(TABLE, table="scale_attention_tests.csv"),
            caption="../report/scale_attention_tables.rst",
            category="Tables",
            labels={"table": "scale attention tests"},
        ),
        plots=report(
            expand(SCALE_ATTENTION_PLOT, dataset=DATASETS),
            caption="../report/scale_attention.rst",
            category="Figures",
            subcategory="Scale attention",
        ),
    log:
        "logs/scale_attention.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        datasets=DATASETS,
        method=REFERENCE,
    script:
        "../workflow_scripts/scale_attention.py"


rule attention_maps:
    """Cross-scale attention maps of the reference on every slide of a dataset (Fig. 4/6)."""
    input:
        unpack(attention_maps_inputs),
    output:
        report(
            # the report shows each slide's JPEG preview; the full-size PNG is beside it
            directory(ATTENTION_MAPS),
            patterns=["{slide}.jpg"],
            caption="../report/attention_maps.rst",
            category="Attention maps",
            subcategory="{dataset}",
            labels={"slide": "{slide}"},
        ),
    log:
        "logs/attention_maps/{dataset}.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        cohort=lambda w: cohort_of(w.dataset),
    script:
        "../workflow_scripts/attention_maps.py"


rule attention_localisation:
    """Toy cohorts: AUROC of every method's patch attention against the positive-region masks."""
    input:
        unpack(attention_localisation_inputs),
    output:
        report(
            fill(TABLE, table="attention_localisation.csv"),
            caption="../report/attention_localisation.rst",
            category="Tables",
            labels={"table": "attention localisation"},
        ),
    log:
        "logs/attention_localisation.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/attention_localisation.py"
