# Fine-tuning: one job per cell of a method that trains (base, and variants of a training kind, e.g. split).


rule finetune:
    input:
        model=untuned_model_input,
        data=cell_train_data,
        # nothing, or in a folder made up to b25cd7d its old list of evaluation sets (legacy_eval_sets)
        eval_sets=legacy_eval_sets,
        deepspeed=deepspeed_config,
    output:
        model=directory(paths.cell_file("model")),
    log:
        "logs/finetune/{model}/{method}/{leaf}.log",
    benchmark:
        "benchmarks/finetune/{model}/{method}/{leaf}.tsv"
    wildcard_constraints:
        method=TRAINED,
    conda:
        "../envs/ropelaw.yaml"
    resources:
        gpu=0,
    params:
        base=cell_base,
        spec=finetune_spec,
        method=trained_method,
        launch=launcher,
        # Checkpoints live outside the declared output, so a re-run resumes from the newest one.
        checkpoints=cell_checkpoints,
    shell:
        "{params.launch} finetune --model {input.model:q} --data {input.data:q} --base {params.base} "
        "--spec {params.spec:q} {params.method} --checkpoints {params.checkpoints:q} --out {output.model:q} > {log:q} 2>&1"
