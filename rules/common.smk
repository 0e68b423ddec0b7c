# Helpers shared by the rules: configuration, sample sheets and the path of every output.
from pathlib import Path

import csmil
from csmil.config import dataset_sample_sheet, derive_seed, validate_config

validate_config(config)

RESULTS = "results"
SCALES = list(csmil.SCALES)
DATASETS = list(config["datasets"])
SAMPLES = {
    ds: dataset_sample_sheet(ds, spec, config["seed"], RESULTS).set_index(
        "slide_id", drop=False
    )
    for ds, spec in config["datasets"].items()
}
TOY_DATASETS = [ds for ds, spec in config["datasets"].items() if "toy" in spec]
METHODS = list(config["mil"]["methods"])
N_FOLDS = int(config["splits"]["n_folds"])


def _alternatives(names):
    return "|".join(names) if names else "(?!)"


wildcard_constraints:
    dataset=_alternatives(DATASETS),
    toy_dataset=_alternatives(TOY_DATASETS),
    slide=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    patient=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    scale=_alternatives(SCALES),
    method=r"[a-z0-9_]+",
    fold=r"\d+",
    group=r"[A-Za-z0-9][A-Za-z0-9-]*",


def encoder_group(dataset):
    """Datasets in one encoder group share one encoder per scale."""
    return config["datasets"][dataset].get("encoder_group", dataset)


GROUPS = sorted({encoder_group(ds) for ds in DATASETS})


def slide_file(wildcards):
    return SAMPLES[wildcards.dataset].loc[wildcards.slide, "path"]


def slide_row(wildcards):
    return SAMPLES[wildcards.dataset].loc[wildcards.slide]


def slide_mpp(wildcards):
    row = slide_row(wildcards)
    mpp = row.get("mpp") if "mpp" in row.index else None
    return None if mpp is None or mpp != mpp else float(mpp)


def patch_store(dataset, slide):
    return f"{RESULTS}/{dataset}/patches/{slide}.h5"


def feature_store(dataset, slide):
    return f"{RESULTS}/{dataset}/features/{slide}.h5"


def encoder_file(group, scale):
    return f"{RESULTS}/encoders/{group}/{scale}.pt"


def pretrain_patch_stores(wildcards):
    """Patch stores of the pinned pretraining slides of every dataset in the group."""
    out = []
    for ds in DATASETS:
        if encoder_group(ds) == wildcards.group:
            sheet = SAMPLES[ds]
            out += [patch_store(ds, s) for s in sheet.index[sheet["pretrain"]]]
    if not out:
        raise ValueError(
            f"encoder group {wildcards.group!r} has no pretraining slides: mark some slides "
            "with pretrain=true in the sample sheet"
        )
    return out


def slide_encoders(wildcards):
    group = encoder_group(wildcards.dataset)
    return {s: encoder_file(group, s) for s in SCALES}


def patients(dataset):
    return sorted(SAMPLES[dataset]["patient_id"].unique())


def patient_slides(dataset, patient):
    sheet = SAMPLES[dataset]
    return sheet.index[sheet["patient_id"] == patient].tolist()


def patient_features(wildcards):
    return [
        feature_store(wildcards.dataset, s)
        for s in patient_slides(wildcards.dataset, wildcards.patient)
    ]


def phenotype_table(dataset, patient):
    return f"{RESULTS}/{dataset}/phenotypes/{patient}.tsv"


def dataset_patient_inputs(wildcards):
    """Every feature store and phenotype table of a dataset (MIL training reads them all)."""
    ds = wildcards.dataset
    return {
        "features": [feature_store(ds, s) for s in SAMPLES[ds].index],
        "phenotypes": [phenotype_table(ds, p) for p in patients(ds)],
    }


def patient_feature_map(wildcards):
    """patient id -> its feature store paths, for the training script."""
    ds = wildcards.dataset
    return {
        p: [feature_store(ds, s) for s in patient_slides(ds, p)] for p in patients(ds)
    }


def patient_phenotype_map(wildcards):
    """patient id -> its phenotype table, for the training script."""
    return {
        p: phenotype_table(wildcards.dataset, p) for p in patients(wildcards.dataset)
    }


def mil_dir(dataset, method, fold):
    return f"{RESULTS}/{dataset}/mil/{method}/fold{fold}"


def fold_predictions(wildcards):
    return [
        f"{mil_dir(wildcards.dataset, wildcards.method, f)}/predictions.tsv"
        for f in range(N_FOLDS)
    ]


def metrics_file(dataset, method):
    return f"{RESULTS}/{dataset}/mil/{method}/metrics.tsv"


def toy_cohorts():
    """Toy cohort name -> the dataset that holds it (first one wins)."""
    out = {}
    for ds in TOY_DATASETS:
        out.setdefault(config["datasets"][ds]["toy"]["cohort"], ds)
    return out


def table5_metrics():
    return [metrics_file(ds, m) for ds in toy_cohorts().values() for m in METHODS]


def all_targets():
    targets = [metrics_file(ds, m) for ds in DATASETS for m in METHODS]
    targets += [compare_file(ds) for ds in DATASETS]
    targets += [
        f"{RESULTS}/tables/table{n}.{ext}"
        for n in (1, 2, 3, 4, 6)
        for ext in ("csv", "md")
    ]
    targets += [
        f"{RESULTS}/figures/{ds}/{name}"
        for ds in DATASETS
        for name in ("roc_pr.png", "scale_attention.png", "attention_maps")
    ]
    targets += [
        f"{RESULTS}/tables/scale_attention.csv",
        f"{RESULTS}/tables/scale_attention_tests.csv",
    ]
    if TOY_DATASETS:
        targets += [f"{RESULTS}/tables/table5.csv", f"{RESULTS}/tables/table5.md"]
        targets.append(f"{RESULTS}/tables/attention_localisation.csv")
    return targets


def stage_seed(*keys):
    return derive_seed(config["seed"], *keys)


# Comparison, figures, report and prediction.
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


SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".bif")


def predict_inputs(wildcards):
    """The slides of predict/{batch}/ (any OpenSlide format), one method's fold models and the
    dataset's encoders."""
    folder = Path("predict") / wildcards.batch
    slides = sorted(
        str(p) for p in folder.glob("*") if p.suffix.lower() in SLIDE_SUFFIXES
    )
    if not slides:
        raise ValueError(
            f"no slides in {folder}/ (looked for {', '.join(SLIDE_SUFFIXES)}); put the new "
            "slides there and ask for results/predict/{dataset}/{method}/{batch}/predictions.tsv"
        )
    return {
        "slides": slides,
        "models": fold_files(wildcards.dataset, wildcards.method, "model.pt"),
        "encoders": list(slide_encoders(wildcards).values()),
    }
