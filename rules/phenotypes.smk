rule cluster_patient:
    """Phenotype clusters of one patient: k-means on the 20x features of its slides."""
    input:
        patient_features,
    output:
        PHENOTYPES,
    log:
        "logs/cluster_patient/{dataset}/{patient}.log",
    conda:
        "../envs/csmil.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        n_clusters=config["clustering"]["n_clusters"],
        seed=lambda w: stage_seed("cluster", w.dataset, w.patient),
    script:
        "../workflow_scripts/cluster_patient.py"
