rule roc_pr:
    """ROC and precision-recall curves of every method on one dataset (paper Fig. 3)."""
    input:
        curves=lambda w: [f"{RESULTS}/{w.dataset}/mil/{m}/curves.tsv" for m in COMPARED],
        metrics=lambda w: [metrics_file(w.dataset, m) for m in COMPARED],
    output:
        report(
            f"{RESULTS}/figures/{{dataset}}/roc_pr.png",
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
        curves=lambda w: {
            m: f"{RESULTS}/{w.dataset}/mil/{m}/curves.tsv" for m in COMPARED
        },
        metrics=lambda w: {m: metrics_file(w.dataset, m) for m in COMPARED},
        reference=REFERENCE,
    script:
        "../workflow_scripts/roc_pr.py"


rule scale_attention:
    """Per-scale attention of the reference: summary, paired Wilcoxon tests, box plots (Fig. 6)."""
    input:
        attention=[
            p for ds in DATASETS for p in fold_files(ds, REFERENCE, "attention.tsv")
        ],
        predictions=[
            p for ds in DATASETS for p in fold_files(ds, REFERENCE, "predictions.tsv")
        ],
    output:
        summary=report(
            f"{RESULTS}/tables/scale_attention.csv",
            caption="../report/scale_attention_tables.rst",
            category="Tables",
            labels={"table": "scale attention"},
        ),
        tests=report(
            f"{RESULTS}/tables/scale_attention_tests.csv",
            caption="../report/scale_attention_tables.rst",
            category="Tables",
            labels={"table": "scale attention tests"},
        ),
        plots=report(
            expand(
                f"{RESULTS}/figures/{{dataset}}/scale_attention.png", dataset=DATASETS
            ),
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
        runs={
            ds: {
                "attention": fold_files(ds, REFERENCE, "attention.tsv"),
                "predictions": fold_files(ds, REFERENCE, "predictions.tsv"),
            }
            for ds in DATASETS
        },
        plots={ds: f"{RESULTS}/figures/{ds}/scale_attention.png" for ds in DATASETS},
        method=REFERENCE,
    script:
        "../workflow_scripts/scale_attention.py"


rule attention_maps:
    """Cross-scale attention maps of the reference on every slide of a dataset (Fig. 4/6)."""
    input:
        attention=lambda w: fold_files(w.dataset, REFERENCE, "attention.tsv"),
        predictions=lambda w: fold_files(w.dataset, REFERENCE, "predictions.tsv"),
        slides=lambda w: [
            p for s in slide_paths(w.dataset, True).values() for p in s.values()
        ],
    output:
        report(
            directory(f"{RESULTS}/figures/{{dataset}}/attention_maps"),
            patterns=["{slide}.png"],
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
        slides=lambda w: slide_paths(w.dataset, True),
        cohort=lambda w: cohort_of(w.dataset),
    script:
        "../workflow_scripts/attention_maps.py"


rule attention_localisation:
    """Toy cohorts: AUROC of every method's patch attention against the positive-region masks."""
    input:
        attention=[
            p
            for ds in TOY_DATASETS
            for m in COMPARED
            for p in fold_files(ds, m, "attention.tsv")
        ],
        slides=[
            p
            for ds in TOY_DATASETS
            for s in slide_paths(ds, True).values()
            for k, p in s.items()
            if k != "slide"
        ],
    output:
        report(
            f"{RESULTS}/tables/attention_localisation.csv",
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
    params:
        runs=[
            {
                "dataset": ds,
                "method": m,
                "attention": fold_files(ds, m, "attention.tsv"),
                "slides": slide_paths(ds, True),
            }
            for ds in TOY_DATASETS
            for m in COMPARED
        ],
    script:
        "../workflow_scripts/attention_localisation.py"
