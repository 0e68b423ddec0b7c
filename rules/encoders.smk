rule list_pretraining:
    """The patch stores of an encoder group's pretraining slides, as one listing."""
    input:
        unpack(pretraining_inputs),
    output:
        PRETRAIN_LISTING,
    log:
        "logs/list_pretraining/{group}.log",
    localrule: True
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../workflow_scripts/list_inputs.py"


rule train_encoder:
    """SimSiam encoder of one scale on the pinned pretraining slides of an encoder group.

    The three scales of a group share one seed: their encoders start from the same weights and
    see the same patch draw (co-centred triplets) in the same order, so their feature spaces
    stay comparable, which the shared cross-scale embedding of CS-MIL relies on.
    """
    input:
        pretraining=PRETRAIN_LISTING,
    output:
        encoder=ENCODER,
        history=ENCODER_HISTORY,
    log:
        "logs/train_encoder/{group}/{scale}.log",
    benchmark:
        "results/benchmarks/train_encoder/{group}/{scale}.tsv"
    conda:
        "../envs/csmil.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=720,
    params:
        backbone=config["encoder"]["backbone"],
        layers=config["encoder"]["layers"],
        pooling=config["encoder"]["pooling"],
        epochs=config["encoder"]["epochs"],
        batch_size=config["encoder"]["batch_size"],
        base_lr=config["encoder"]["base_lr"],
        warmup_epochs=config["encoder"]["warmup_epochs"],
        schedule_epochs=config["encoder"]["schedule_epochs"],
        max_patches=config["encoder"]["max_patches"],
        augment=config["encoder"]["augment"],
        seed=lambda w: stage_seed("encoder", w.group),
    script:
        "../workflow_scripts/train_encoder.py"
