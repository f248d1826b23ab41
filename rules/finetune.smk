# Fine-tuning: one job per (model, base, tuning length) cell of method base (the only method that trains).


rule finetune:
    input:
        model=untuned_model_input,
        data="results/{model}/data/train_len{length}",
        # Ordering only (ancient: never a rerun reason): the model's evaluation sets are built first,
        # so a bad one fails before training (rule eval_sets, whose path no evaluation length changes).
        eval_sets=ancient("results/{model}/data/eval_sets.txt"),
        deepspeed=deepspeed_config,
    output:
        model=directory("results/{model}/{method}/base{base}_len{length}/model"),
    log:
        "logs/finetune/{model}/{method}/base{base}_len{length}.log",
    benchmark:
        "benchmarks/finetune/{model}/{method}/base{base}_len{length}.tsv"
    wildcard_constraints:
        method="base",
    conda:
        "../envs/ropelaw.yaml"
    resources:
        gpu=0,
    params:
        spec=finetune_spec,
        launch=launcher,
        # Checkpoints live outside the declared output, so a re-run resumes from the newest one.
        checkpoints="results/{model}/{method}/base{base}_len{length}/checkpoints",
    shell:
        "{params.launch} finetune --model {input.model} --data {input.data} --base {wildcards.base} "
        "--spec {params.spec:q} --checkpoints {params.checkpoints} --out {output.model} > {log} 2>&1"
