# Models: a scratch model is initialised at random and pretrained here; an hf_dir model is used in place;
# a GGUF file is dequantized once into results/{model}/hf, a hub model saved once into results/{model}/hub.


rule init_model:
    input:
        tokenizer=paths.TOKENIZER,
    output:
        directory("results/{model}/init"),
    log:
        "logs/init_model/{model}.log",
    conda:
        "../envs/ropelaw.yaml"
    params:
        spec=model_spec_json,
    shell:
        "ropelaw init-model --spec {params.spec:q} --tokenizer {input.tokenizer:q} --out {output:q} > {log:q} 2>&1"


rule pretrain:
    input:
        model="results/{model}/init",
        data=pretrain_data,
        # nothing, or in a folder made up to b25cd7d its old list of evaluation sets (legacy_eval_sets)
        eval_sets=legacy_eval_sets,
        deepspeed=pretrain_deepspeed_config,
    output:
        directory(paths.UNTUNED["scratch"]),
    log:
        "logs/pretrain/{model}.log",
    benchmark:
        "benchmarks/pretrain/{model}.tsv"
    conda:
        "../envs/ropelaw.yaml"
    resources:
        gpu=0,
    params:
        base=original_base,
        spec=pretrain_spec,
        launch=launcher,
        checkpoints="results/{model}/pretrain_checkpoints",
    shell:
        "{params.launch} finetune --model {input.model:q} --data {input.data:q} --base {params.base} "
        "--spec {params.spec:q} --checkpoints {params.checkpoints:q} --out {output:q} > {log:q} 2>&1"


rule convert_gguf:
    input:
        gguf=gguf_file,
    output:
        directory(paths.UNTUNED["gguf"]),
    log:
        "logs/convert_gguf/{model}.log",
    conda:
        "../envs/ropelaw.yaml"
    shell:
        "ropelaw convert-gguf --gguf {input.gguf:q} --out {output:q} > {log:q} 2>&1"


rule fetch_hub:
    output:
        directory(paths.UNTUNED["hub"]),
    log:
        "logs/fetch_hub/{model}.log",
    conda:
        "../envs/ropelaw.yaml"
    params:
        source=hub_args,
    shell:
        "ropelaw fetch-hub {params.source} --out {output:q} > {log:q} 2>&1"
