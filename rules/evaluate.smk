# Evaluation: perplexity and accuracy of one cell at each of its evaluation lengths.


rule evaluate:
    input:
        model=cell_model_dir,
        data=eval_data_dir,
    output:
        table=paths.cell_file("eval.csv"),
        provenance=paths.cell_file("eval.json"),
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
    shell:
        "ropelaw evaluate --model {input.model:q} --cell-json {params.cell:q} --eval-data {input.data:q} "
        "--lengths {params.lengths} --chunk-size {params.chunk} --batch-size {params.batch} "
        "--precision {params.precision:q} --attn-implementation {params.attn:q} {params.buckets} "
        "{params.compile} --out {output.table:q} > {log:q} 2>&1"
