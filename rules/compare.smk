# Helpers of the comparison, figure, report and prediction rules (candidates for common.smk).
REFERENCE = config["tables"]["reference"]
# every configured method, plus the reference when it is not listed (it is trained for the tests)
COMPARED = METHODS + [m for m in [REFERENCE] if m not in METHODS]
N_BOOT = 2000  # bootstrap resamples of the AP/AUC tests (pROC's default)


def fold_files(dataset, method, name):
    """One file of every fold of a method, e.g. its predictions.tsv."""
    return [f"{mil_dir(dataset, method, f)}/{name}" for f in range(N_FOLDS)]


def compare_file(dataset):
    return f"{RESULTS}/{dataset}/compare.tsv"


def compared_predictions(wildcards):
    """method -> fold predictions of every compared method of a dataset."""
    return {m: fold_files(wildcards.dataset, m, "predictions.tsv") for m in COMPARED}


def toy_mask(dataset, slide):
    return f"{RESULTS}/{dataset}/slides/{slide}.mask.png"


def slide_paths(dataset, with_mask):
    """slide id -> its slide, patch store and (toy cohorts, when asked) mask paths."""
    out = {}
    for slide in SAMPLES[dataset].index:
        paths = {
            "slide": SAMPLES[dataset].loc[slide, "path"],
            "patches": patch_store(dataset, slide),
        }
        if with_mask and dataset in TOY_DATASETS:
            paths["mask"] = toy_mask(dataset, slide)
        out[slide] = paths
    return out


def cohort_of(dataset):
    """The toy cohort of a dataset (micro, macro) or None for a real cohort."""
    return config["datasets"][dataset].get("toy", {}).get("cohort")


rule compare:
    """Every method against the reference on the patients both scored: DeLong (AUC), paired bootstrap (AP, AUC)."""
    input:
        lambda w: [p for paths in compared_predictions(w).values() for p in paths],
    output:
        f"{RESULTS}/{{dataset}}/compare.tsv",
    log:
        "logs/compare/{dataset}.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        predictions=compared_predictions,
        reference=REFERENCE,
        n_folds=N_FOLDS,
        n_boot=N_BOOT,
        seed=lambda w: stage_seed("compare", w.dataset),
    script:
        "../workflow_scripts/compare.py"
