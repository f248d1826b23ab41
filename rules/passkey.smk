# Passkey retrieval: a key hidden at several depths of every context length, for one cell.


rule passkey:
    input:
        model=cell_model_dir,
        data=eval_data_dir,
        tokenizer=tokenizer_dir,
    output:
        table=paths.cell_file("passkey.csv"),
        provenance=paths.cell_file("passkey.json"),
    log:
        "logs/passkey/{model}/{method}/{leaf}.log",
    benchmark:
        "benchmarks/passkey/{model}/{method}/{leaf}.tsv"
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
        # The allocator's expandable segments (unless set already): without them, a 7B's prompts of 80K tokens
        # ran out of an 80 GiB cap with 27 GiB reserved but free; with them 96K fit (BENCHMARKS.md, passkeymem).
        'PYTORCH_CUDA_ALLOC_CONF="${{PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}}" '
        "ropelaw passkey --model {input.model:q} --cell-json {params.cell:q} --eval-data {input.data:q} "
        "--tokenizer {input.tokenizer:q} --spec {params.spec:q} --batch-size {params.batch} "
        "--precision {params.precision:q} --attn-implementation {params.attn:q} "
        "--bos {params.bos:q} --out {output.table:q} > {log:q} 2>&1"
