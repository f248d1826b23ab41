# Passkey retrieval: a key hidden at several depths of every context length, for one cell.


rule passkey:
    input:
        model=cell_model_dir,
        data=eval_data_dir,
        tokenizer=tokenizer_dir,
    output:
        table="results/{model}/{method}/base{base}_len{length}/passkey.csv",
        provenance="results/{model}/{method}/base{base}_len{length}/passkey.json",
    log:
        "logs/passkey/{model}/{method}/base{base}_len{length}.log",
    benchmark:
        "benchmarks/passkey/{model}/{method}/base{base}_len{length}.tsv"
    conda:
        "../envs/ropelaw.yaml"
    resources:
        gpu=0,
    params:
        cell=cell_json,
        spec=passkey_spec,
        batch=CFG["evaluation"]["batch_size"],
        precision=CFG["evaluation"]["precision"],
        attn=CFG["evaluation"]["attn_implementation"],
        bos=str(CFG["evaluation"]["bos"]).lower(),
    shell:
        "ropelaw passkey --model {input.model} --cell-json {params.cell:q} --eval-data {input.data} "
        "--tokenizer {input.tokenizer} --spec {params.spec:q} --batch-size {params.batch} "
        "--precision {params.precision} --attn-implementation {params.attn} "
        "--bos {params.bos} --out {output.table} > {log} 2>&1"
