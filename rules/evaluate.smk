# Evaluation: perplexity and accuracy of one cell at each of its evaluation lengths.


rule evaluate:
    input:
        model=cell_model_dir,
        data=eval_data_dir,
        tokenizer=tokenizer_dir,
    output:
        table=paths.cell_file("eval.csv"),
        provenance=paths.cell_file("eval.json"),
        docs=paths.cell_file("eval_docs.csv"),
    log:
        "logs/evaluate/{model}/{method}/{leaf}.log",
    benchmark:
        "benchmarks/evaluate/{model}/{method}/{leaf}.tsv"
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
        buckets=ruleargs.flag("--bucket-edges", CFG["evaluation"]["bucket_edges"]),
        compile=ruleargs.flag("--compile", CFG["evaluation"]["compile"]),
        convention=CFG["evaluation"]["convention"],
        bos=str(CFG["evaluation"]["bos"]).lower(),
        budget=ruleargs.flag(
            "--memory-budget-gib", CFG["evaluation"]["memory_budget_gib"]
        ),
    shell:
        "ropelaw evaluate --model {input.model:q} --cell-json {params.cell:q} --eval-data {input.data:q} "
        "--lengths {params.lengths} --chunk-size {params.chunk} --batch-size {params.batch} "
        "--precision {params.precision:q} --attn-implementation {params.attn:q} {params.buckets} "
        "{params.compile} --tokenizer {input.tokenizer:q} --convention {params.convention:q} "
        "--bos {params.bos:q} {params.budget} --out {output.table:q} > {log:q} 2>&1"
