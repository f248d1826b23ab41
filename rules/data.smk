# Data: the embedded corpus, tokenizers, packed training sequences, the long-document eval sets
# (one per longest evaluation length: rows of {length} tokens).


rule fetch_embedded:
    output:
        train=f"{EMBEDDED_DIR}/train/00.jsonl.zst",
        val=f"{EMBEDDED_DIR}/val/00.jsonl.zst",
        manifest=f"{EMBEDDED_DIR}/manifest.json",
    log:
        "logs/fetch_embedded.log",
    conda:
        "../envs/ropelaw.yaml"
    params:
        out=ruleargs.folder_of_manifest,
        cache="resources/cache",
    shell:
        "ropelaw fetch-embedded --cache {params.cache:q} --out {params.out:q} > {log:q} 2>&1"


rule train_tokenizer:
    input:
        shards=CFG["data"]["train"]["shards"],
    output:
        directory(paths.TOKENIZER),
    log:
        "logs/train_tokenizer/{model}.log",
    conda:
        "../envs/ropelaw.yaml"
    params:
        subsets=ruleargs.subset_args(CFG, "train"),
        vocab=vocab_size,
    shell:
        "ropelaw train-tokenizer --shards {input.shards:q} {params.subsets} "
        "--vocab-size {params.vocab} --out {output:q} > {log:q} 2>&1"


rule pack:
    input:
        shards=CFG["data"]["train"]["shards"],
        tokenizer=tokenizer_dir,
    output:
        directory(paths.TRAIN_ROWS),
    log:
        "logs/pack/{model}_len{length}.log",
    conda:
        "../envs/ropelaw.yaml"
    params:
        subsets=ruleargs.subset_args(CFG, "train"),
        limit=ruleargs.flag("--max-sequences", CFG["data"]["train"]["max_sequences"]),
    shell:
        "ropelaw pack --shards {input.shards:q} {params.subsets} --tokenizer {input.tokenizer:q} "
        "--seq-len {wildcards.length} {params.limit} --out {output:q} > {log:q} 2>&1"


rule prepare_eval:
    input:
        shards=CFG["data"]["eval"]["shards"],
        tokenizer=tokenizer_dir,
    output:
        directory(paths.EVAL_ROWS),
    log:
        "logs/prepare_eval/{model}_len{length}.log",
    conda:
        "../envs/ropelaw.yaml"
    params:
        subsets=ruleargs.subset_args(CFG, "eval"),
        short_docs=CFG["data"]["eval"]["short_docs"],
        max_docs=ruleargs.flag("--max-docs", CFG["data"]["eval"]["max_docs"]),
        windows=CFG["data"]["eval"]["windows_per_doc"],
        skip=CFG["data"]["eval"]["skip_tokens"],
    shell:
        "ropelaw prepare-eval --shards {input.shards:q} {params.subsets} --tokenizer {input.tokenizer:q} "
        "--length {wildcards.length} --short-docs {params.short_docs:q} {params.max_docs} "
        "--windows-per-doc {params.windows} --skip-tokens {params.skip} "
        "--out {output:q} > {log:q} 2>&1"
