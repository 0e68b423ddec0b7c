# Helpers shared by the rules: configuration, sample sheets, resolved methods, the path template
# of every output and the inputs of every job.
from pathlib import Path

import csmil
from csmil.config import SheetIndex, derive_seed, load_sample_sheet, validate_config
from csmil.inputs import flatten
from csmil.mil.methods import configured_methods
from csmil.mil.splits import ledger_path
from csmil.toy.generator import toy_sample_sheet

validate_config(config)

RESULTS = "results"
SCALES = list(csmil.SCALES)

# ---------------------------------------------------------------- output path templates
# Each is written here once; rules use it as output and helpers fill it (fill, fold_files).
TOY_SLIDES = f"{RESULTS}/{{toy_dataset}}/slides"
TOY_SLIDE = f"{TOY_SLIDES}/{{slide}}.svs"
TOY_MASK = f"{TOY_SLIDES}/{{slide}}.mask.png"
PATCHES = f"{RESULTS}/{{dataset}}/patches/{{slide}}.h5"
PRETRAIN_LISTING = f"{RESULTS}/encoders/{{group}}/pretraining.inputs.json"
ENCODER = f"{RESULTS}/encoders/{{group}}/{{scale}}.pt"
ENCODER_HISTORY = f"{RESULTS}/encoders/{{group}}/{{scale}}.history.tsv"
FEATURES = f"{RESULTS}/{{dataset}}/features/{{slide}}.h5"
PHENOTYPES = f"{RESULTS}/{{dataset}}/phenotypes/{{patient}}.tsv"
COHORT_LISTING = f"{RESULTS}/{{dataset}}/cohort.inputs.json"
SPLITS = f"{RESULTS}/{{dataset}}/splits.tsv"
SPLITS_LEDGER = str(
    ledger_path(SPLITS)
)  # every patient's fold, kept as the cohort grows
MIL_FOLD = f"{RESULTS}/{{dataset}}/mil/{{method}}/fold{{fold}}"
FOLD_MODEL = f"{MIL_FOLD}/model.pt"
FOLD_HISTORY = f"{MIL_FOLD}/history.tsv"
FOLD_PREDICTIONS = f"{MIL_FOLD}/predictions.tsv"
FOLD_ATTENTION = f"{MIL_FOLD}/attention.tsv"
METHOD_BENCHMARK = f"{RESULTS}/benchmarks/train_mil/{{dataset}}/{{method}}.tsv"
METRICS = f"{RESULTS}/{{dataset}}/mil/{{method}}/metrics.tsv"
CURVES = f"{RESULTS}/{{dataset}}/mil/{{method}}/curves.tsv"
COMPARE = f"{RESULTS}/{{dataset}}/compare.tsv"
TABLE = f"{RESULTS}/tables/{{table}}"
SLIDE_QC = f"{RESULTS}/tables/slide_qc_{{dataset}}.tsv"
ROC_PR = f"{RESULTS}/figures/{{dataset}}/roc_pr.png"
SCALE_ATTENTION_PLOT = f"{RESULTS}/figures/{{dataset}}/scale_attention.png"
ATTENTION_MAPS = f"{RESULTS}/figures/{{dataset}}/attention_maps"
PREDICT = f"{RESULTS}/predict/{{dataset}}/{{method}}/{{batch}}"


def fill(template, **wildcards):
    """One path of a template, e.g. fill(PATCHES, dataset="micro", slide="s1")."""
    return template.format(**wildcards)


# ---------------------------------------------------------------- datasets and methods


def sample_sheet(name, spec):
    """The sample sheet of a configured dataset; a toy cohort's is generated (its slides live
    under TOY_SLIDES; its seed defaults to one derived from the master seed and its name).
    """
    if "samples" in spec:
        return load_sample_sheet(spec["samples"])
    toy = spec["toy"]
    return toy_sample_sheet(
        dataset=name,
        cohort=toy["cohort"],
        n_patients=int(toy["n_patients"]),
        seed=int(toy.get("seed", derive_seed(config["seed"], name))),
        slides_dir=fill(TOY_SLIDES, toy_dataset=name),
        pretrain_fraction=float(toy["pretrain_fraction"]),
    )


DATASETS = list(config["datasets"])
# Every sheet indexed once (slide -> row, patient -> slides): the input functions below run
# once per job, and a lookup that scanned the sheet would make planning quadratic in slides.
SAMPLES = {
    ds: SheetIndex.from_frame(sample_sheet(ds, spec))
    for ds, spec in config["datasets"].items()
}
TOY_DATASETS = [ds for ds, spec in config["datasets"].items() if "toy" in spec]
N_FOLDS = int(config["splits"]["n_folds"])
REFERENCE = config["tables"]["reference"]
# Every configured method and variant resolved now: a mistyped name fails the dry run.
SPECS = configured_methods(config["mil"], REFERENCE)
METHODS = list(config["mil"]["methods"])
# every configured method, plus the reference when it is not listed (it is trained for the tests)
COMPARED = list(SPECS)
N_BOOT = 2000  # bootstrap resamples of the AP/AUC tests (pROC's default)


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


def stage_seed(*keys):
    return derive_seed(config["seed"], *keys)


def toy_cohorts():
    """Toy cohort name -> the dataset that holds it (first one wins)."""
    out = {}
    for ds in TOY_DATASETS:
        out.setdefault(config["datasets"][ds]["toy"]["cohort"], ds)
    return out


def cohort_of(dataset):
    """The toy cohort of a dataset (micro, macro) or None for a real cohort."""
    return config["datasets"][dataset].get("toy", {}).get("cohort")


# ---------------------------------------------------------------- slides and patients


def slide_row(dataset, slide):
    return SAMPLES[dataset].row(slide)


def slide_file(wildcards):
    return slide_row(wildcards.dataset, wildcards.slide)["path"]


def slide_mpp(wildcards):
    mpp = slide_row(wildcards.dataset, wildcards.slide).get("mpp")
    return None if mpp is None else float(mpp)


def patients(dataset):
    return SAMPLES[dataset].patients


def patient_slides(dataset, patient):
    return SAMPLES[dataset].slides(patient)


def split_patients(wildcards):
    """Patient id and label of every patient of a dataset (what the folds depend on)."""
    return SAMPLES[wildcards.dataset].patient_labels()


def patient_slide_counts(dataset):
    return {p: len(s) for p, s in SAMPLES[dataset].by_patient.items()}


def dataset_patch_stores(wildcards):
    """The patch store of every slide of a dataset that the sample sheet keeps."""
    return [
        fill(PATCHES, dataset=wildcards.dataset, slide=s)
        for s in SAMPLES[wildcards.dataset].rows
    ]


def excluded_slides(wildcards):
    """Slide id -> reason, for the slides the sample sheet's exclude column leaves out."""
    return SAMPLES[wildcards.dataset].excluded


def slide_files(dataset, with_mask):
    """slide id -> its slide, patch store and (toy cohorts, when asked) mask paths."""
    out = {}
    for slide, row in SAMPLES[dataset].rows.items():
        paths = {
            "slide": row["path"],
            "patches": fill(PATCHES, dataset=dataset, slide=slide),
        }
        if with_mask and dataset in TOY_DATASETS:
            paths["mask"] = fill(TOY_MASK, toy_dataset=dataset, slide=slide)
        out[slide] = paths
    return out


def method_folds(template):
    """Every fold's file of a template, keeping the {dataset} and {method} wildcards."""
    return expand(template, fold=range(N_FOLDS), allow_missing=True)


def fold_files(template, dataset, method):
    """One file of every fold of a method, e.g. fold_files(FOLD_PREDICTIONS, ds, m)."""
    return [
        fill(template, dataset=dataset, method=method, fold=f) for f in range(N_FOLDS)
    ]


# ---------------------------------------------------------------- inputs of the jobs
# Input functions return named inputs; a nested map is flattened to names joined by "__"
# (csmil.inputs), which the job's script nests again. Files that many jobs read (a cohort's
# feature stores, a group's pretraining patches) reach them through a listing job: each
# input of each job costs Snakemake time while it plans, and a cohort of 10,000 slides
# read by every MIL fold would make planning take minutes.


def pretraining_inputs(wildcards):
    """Patch stores of the pinned pretraining slides of every dataset in the group."""
    out = []
    for ds in DATASETS:
        if encoder_group(ds) == wildcards.group:
            out += [
                fill(PATCHES, dataset=ds, slide=s) for s in SAMPLES[ds].pretrain_slides
            ]
    if not out:
        raise ValueError(
            f"encoder group {wildcards.group!r} has no pretraining slides: mark some slides "
            "with pretrain=true in the sample sheet"
        )
    return {"patches": out}


def slide_encoders(wildcards):
    """The encoder of every scale, in SCALES order."""
    group = encoder_group(wildcards.dataset)
    return [fill(ENCODER, group=group, scale=s) for s in SCALES]


def patient_features(wildcards):
    return [
        fill(FEATURES, dataset=wildcards.dataset, slide=s)
        for s in patient_slides(wildcards.dataset, wildcards.patient)
    ]


def cohort_inputs(wildcards):
    """Every patient's feature stores and phenotype table (MIL training reads them all)."""
    ds = wildcards.dataset
    return flatten(
        {
            "features": {
                p: [fill(FEATURES, dataset=ds, slide=s) for s in patient_slides(ds, p)]
                for p in patients(ds)
            },
            "phenotypes": {
                p: fill(PHENOTYPES, dataset=ds, patient=p) for p in patients(ds)
            },
        }
    )


def method_fold_predictions(wildcards):
    return fold_files(FOLD_PREDICTIONS, wildcards.dataset, wildcards.method)


def compare_inputs(wildcards):
    """Fold predictions of every compared method of a dataset."""
    ds = wildcards.dataset
    return flatten(
        {"predictions": {m: fold_files(FOLD_PREDICTIONS, ds, m) for m in COMPARED}}
    )


def roc_pr_inputs(wildcards):
    ds = wildcards.dataset
    return flatten(
        {
            "curves": {m: fill(CURVES, dataset=ds, method=m) for m in COMPARED},
            "metrics": {m: fill(METRICS, dataset=ds, method=m) for m in COMPARED},
        }
    )


def scale_attention_inputs(wildcards):
    """The reference's fold attention and predictions of every dataset."""
    return flatten(
        {
            "runs": {
                ds: {
                    "attention": fold_files(FOLD_ATTENTION, ds, REFERENCE),
                    "predictions": fold_files(FOLD_PREDICTIONS, ds, REFERENCE),
                }
                for ds in DATASETS
            }
        }
    )


def attention_maps_inputs(wildcards):
    ds = wildcards.dataset
    return flatten(
        {
            "attention": fold_files(FOLD_ATTENTION, ds, REFERENCE),
            "predictions": fold_files(FOLD_PREDICTIONS, ds, REFERENCE),
            "slides": slide_files(ds, True),
        }
    )


def attention_localisation_inputs(wildcards):
    """Toy cohorts: every compared method's fold attention, every slide's patches and mask."""
    return flatten(
        {
            "attention": {
                ds: {m: fold_files(FOLD_ATTENTION, ds, m) for m in COMPARED}
                for ds in TOY_DATASETS
            },
            "slides": {
                ds: {
                    s: {k: p for k, p in paths.items() if k != "slide"}
                    for s, paths in slide_files(ds, True).items()
                }
                for ds in TOY_DATASETS
            },
        }
    )


def table5_inputs(wildcards):
    return flatten(
        {
            "metrics": {
                ds: {m: fill(METRICS, dataset=ds, method=m) for m in METHODS}
                for ds in toy_cohorts().values()
            }
        }
    )


def comparison_tables_inputs(wildcards):
    return flatten({"compare": {ds: fill(COMPARE, dataset=ds) for ds in DATASETS}})


def table4_inputs(wildcards):
    return flatten(
        {
            "datasets": {
                ds: {
                    "splits": fill(SPLITS, dataset=ds),
                    "predictions": fold_files(FOLD_PREDICTIONS, ds, REFERENCE),
                }
                for ds in DATASETS
            }
        }
    )


def table6_inputs(wildcards):
    """Every compared method's fold models, histories and training benchmarks."""
    return flatten(
        {
            "runs": {
                ds: {
                    m: {
                        "models": fold_files(FOLD_MODEL, ds, m),
                        "histories": fold_files(FOLD_HISTORY, ds, m),
                        "benchmarks": [fill(METHOD_BENCHMARK, dataset=ds, method=m)],
                    }
                    for m in COMPARED
                }
                for ds in DATASETS
            }
        }
    )


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
            f"slides there and ask for {fill(PREDICT, **wildcards)}/predictions.tsv"
        )
    return flatten(
        {
            "slides": slides,
            "models": fold_files(FOLD_MODEL, wildcards.dataset, wildcards.method),
            "encoders": dict(zip(SCALES, slide_encoders(wildcards), strict=True)),
        }
    )


# ---------------------------------------------------------------- targets


def all_targets():
    """Every result of a run: the rules' own outputs (rules.<name>.output), per dataset and
    method where they have wildcards."""
    per_dataset = [
        rules.slide_qc.output,
        rules.compare.output,
        rules.roc_pr.output,
        rules.attention_maps.output,
    ]
    targets = expand(rules.evaluate.output.metrics, dataset=DATASETS, method=METHODS)
    targets += expand([str(out[0]) for out in per_dataset], dataset=DATASETS)
    summaries = [
        rules.comparison_tables,
        rules.table4,
        rules.table6,
        rules.scale_attention,
    ]
    if TOY_DATASETS:
        summaries += [rules.table5, rules.attention_localisation]
    return targets + [str(f) for rule in summaries for f in rule.output]
