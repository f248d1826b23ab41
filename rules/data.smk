# Data: the embedded corpus, tokenizers, packed training sequences, the long-document eval set.


rule fetch_embedded:
    output:
        train=f"{EMBEDDED_DIR}/train/00.jsonl.zst",
        val=f"{EMBEDDED_DIR}/val/00.jsonl.zst",
        manifest=f"{EMBEDDED_DIR}/manifest.json",
    log:
        "logs/fetch_embedded.log",
    conda:
        "../envs/ropelaw.yaml"
    shell:
        "ropelaw fetch-embedded --cache resources/cache --out {EMBEDDED_DIR} > {log} 2>&1"


rule train_tokenizer:
    input:
        shards=CFG["data"]["train"]["shards"],
    output:
        directory("results/{model}/tokenizer"),
    params:
        subsets=subset_args("train"),
        vocab=vocab_size,
    log:
        "logs/train_tokenizer/{model}.log",
    conda:
        "../envs/ropelaw.yaml"
    shell:
        "ropelaw train-tokenizer --shards {input.shards} {params.subsets} "
        "--vocab-size {params.vocab} --out {output} > {log} 2>&1"


rule pack:
    input:
        shards=CFG["data"]["train"]["shards"],
        tokenizer=tokenizer_dir,
    output:
        directory("results/{model}/data/train_len{length}"),
    params:
        subsets=subset_args("train"),
        limit=(
            f"--max-sequences {CFG['data']['train']['max_sequences']}"
            if CFG["data"]["train"]["max_sequences"]
            else ""
        ),
    log:
        "logs/pack/{model}_len{length}.log",
    conda:
        "../envs/ropelaw.yaml"
    shell:
        "ropelaw pack --shards {input.shards} {params.subsets} --tokenizer {input.tokenizer} "
        "--seq-len {wildcards.length} {params.limit} --out {output} > {log} 2>&1"


rule prepare_eval:
    input:
        shards=CFG["data"]["eval"]["shards"],
        tokenizer=tokenizer_dir,
    output:
        directory("results/{model}/data/eval"),
    params:
        subsets=subset_args("eval"),
        length=eval_length(),
        short_docs=CFG["data"]["eval"]["short_docs"],
        max_docs=(
            f"--max-docs {CFG['data']['eval']['max_docs']}" if CFG["data"]["eval"]["max_docs"] else ""
        ),
        windows=CFG["data"]["eval"]["windows_per_doc"],
        skip=CFG["data"]["eval"]["skip_tokens"],
    log:
        "logs/prepare_eval/{model}.log",
    conda:
        "../envs/ropelaw.yaml"
    shell:
        "ropelaw prepare-eval --shards {input.shards} {params.subsets} --tokenizer {input.tokenizer} "
        "--length {params.length} --short-docs {params.short_docs} {params.max_docs} "
        "--windows-per-doc {params.windows} --skip-tokens {params.skip} "
        "--out {output} > {log} 2>&1"
