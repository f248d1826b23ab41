# Evaluation: perplexity and accuracy of one cell at each of its evaluation lengths.


rule evaluate:
    input:
        model=cell_model_dir,
        data=eval_data_dir,
        tokenizer=tokenizer_dir,
    output:
        table="results/{model}/{method}/base{base}_len{length}/eval.csv",
        provenance="results/{model}/{method}/base{base}_len{length}/eval.json",
        docs="results/{model}/{method}/base{base}_len{length}/eval_docs.csv",
    log:
        "logs/evaluate/{model}/{method}/base{base}_len{length}.log",
    benchmark:
        "benchmarks/evaluate/{model}/{method}/base{base}_len{length}.tsv"
    conda:
        "../envs/ropelaw.yaml"
    resources:
        gpu=0,
    params:
        cell=cell_json,
        lengths=cell_eval_lengths,
        chunk=CFG["evaluation"]["chunk_size"],
        batch=CFG["evaluation"]["batch_size"],
        precision=CFG["evaluation"]["precision"],
        attn=CFG["evaluation"]["attn_implementation"],
        buckets=(
            "--bucket-edges " + " ".join(map(str, CFG["evaluation"]["bucket_edges"]))
            if CFG["evaluation"]["bucket_edges"]
            else ""
        ),
        compile="--compile" if CFG["evaluation"]["compile"] else "",
        convention=CFG["evaluation"]["convention"],
        bos=str(CFG["evaluation"]["bos"]).lower(),
        budget=(
            f"--memory-budget-gib {CFG['evaluation']['memory_budget_gib']}"
            if CFG["evaluation"]["memory_budget_gib"]
            else ""
        ),
    shell:
        "ropelaw evaluate --model {input.model} --cell-json {params.cell:q} --eval-data {input.data} "
        "--lengths {params.lengths} --chunk-size {params.chunk} --batch-size {params.batch} "
        "--precision {params.precision} --attn-implementation {params.attn} {params.buckets} "
        "{params.compile} --tokenizer {input.tokenizer} --convention {params.convention} "
        "--bos {params.bos} {params.budget} --out {output.table} > {log} 2>&1"
