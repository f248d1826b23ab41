# The tuning corpus: 100M+ SmolLM2 tokens of Debian packages and Shakespeare, a substitute for
# the Pile (docs/corpus/README.md). A study points data.train.shards at its output.


rule build_corpus:
    input:
        train=f"{EMBEDDED_DIR}/train/00.jsonl.zst",
        val=f"{EMBEDDED_DIR}/val/00.jsonl.zst",
        manifest=f"{EMBEDDED_DIR}/manifest.json",
    output:
        corpus=f"{CORPUS_DIR}/corpus.jsonl.zst",
        manifest=f"{CORPUS_DIR}/manifest.json",
    log:
        "logs/build_corpus.log",
    benchmark:
        "benchmarks/build_corpus.tsv"
    conda:
        "../envs/ropelaw.yaml"
    params:
        embedded=ruleargs.folder_of_input_manifest,
        out=ruleargs.folder_of_manifest,
        cache="resources/cache/corpus",
    shell:
        "ropelaw build-corpus --embedded {params.embedded:q} --exclude {input.val:q} "
        "--cache {params.cache:q} --out {params.out:q} > {log:q} 2>&1"
