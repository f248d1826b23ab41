# The law and the figures: cheap aggregation and plotting steps, run locally.
# Every figure is its own job, so the report files it under its model and method with its labels.


localrules:
    law,
    ppl_vs_length,
    passkey_vs_length,
    passkey_heatmap,
    bound_vs_base,
    critical_dimension,


# The report shows one format of each figure (png, else svg, else the first); the others sit beside it.
REPORTED = next((f for f in ("png", "svg") if f in FIGURE_FORMATS), FIGURE_FORMATS[0])
OTHER_FORMATS = [fmt for fmt in FIGURE_FORMATS if fmt != REPORTED]


rule law:
    input:
        evals=cell_outputs(),
        docs=[f"{cell.path}/eval_docs.csv" for cell in CELLS],
        passkey=passkey_outputs(),
    output:
        cells=report(
            "results/law/cells.csv",
            caption="../report/cells.rst",
            category="Law",
            subcategory="Tables",
            labels={"table": "cells: measured and predicted bounds"},
        ),
        fit=report(
            "results/law/fit.csv",
            caption="../report/fit.rst",
            category="Law",
            subcategory="Tables",
            labels={"table": "fit: slope, intercept and C"},
        ),
        bootstrap="results/law/bootstrap.csv",
        seeds=report(
            "results/law/seeds.csv",
            caption="../report/seeds.rst",
            category="Law",
            subcategory="Tables",
            labels={"table": "seeds: their spread per cell and length"},
        ),
        passkey=report(
            "results/law/passkey.csv",
            caption="../report/passkey.rst",
            category="Law",
            subcategory="Tables",
            labels={"table": "passkey: retrieval per cell, length, depth"},
        ),
    log:
        "logs/law.log",
    conda:
        "../envs/ropelaw.yaml"
    params:
        estimator=CFG["law"]["estimator"],
        factor=CFG["law"]["factor"],
        bootstrap=CFG["law"]["bootstrap"],
        seed=CFG["law"]["bootstrap_seed"],
    shell:
        "ropelaw law --evals {input.evals} --passkey {input.passkey} "
        "--estimator {params.estimator} --factor {params.factor} "
        "--bootstrap {params.bootstrap} --bootstrap-seed {params.seed} "
        "--out-cells {output.cells} --out-fit {output.fit} "
        "--out-bootstrap {output.bootstrap} --out-seeds {output.seeds} --out-passkey {output.passkey} > {log} 2>&1"


rule ppl_vs_length:
    input:
        evals=cell_outputs(),
        cells="results/law/cells.csv",
    output:
        figure=report(
            f"results/figures/ppl_vs_length_{{model}}_len{{length}}.{REPORTED}",
            caption="../report/ppl_vs_length.rst",
            category="{model}",
            subcategory="every method",
            labels={
                "figure": "perplexity and accuracy vs length",
                "model": "{model}",
                "method": "all",
                "base": "all",
                "length": "{length}",
            },
        ),
        others=expand(
            "results/figures/ppl_vs_length_{{model}}_len{{length}}.{fmt}",
            fmt=OTHER_FORMATS,
        ),
    log:
        "logs/figures/ppl_vs_length_{model}_len{length}.log",
    conda:
        "../envs/ropelaw.yaml"
    params:
        study=CFG["study"],
    shell:
        "ropelaw figures ppl_vs_length --evals {input.evals} --cells {input.cells} "
        "--study {params.study:q} --model {wildcards.model} --tune-len {wildcards.length} "
        "--out {output} > {log} 2>&1"


rule passkey_vs_length:
    input:
        evals=cell_outputs(),
        cells="results/law/cells.csv",
        passkey="results/law/passkey.csv",
    output:
        figure=report(
            f"results/figures/passkey_vs_length_{{model}}_len{{length}}.{REPORTED}",
            caption="../report/passkey_vs_length.rst",
            category="{model}",
            subcategory="every method",
            labels={
                "figure": "perplexity and passkey retrieval vs length",
                "model": "{model}",
                "method": "all",
                "base": "all",
                "length": "{length}",
            },
        ),
        others=expand(
            "results/figures/passkey_vs_length_{{model}}_len{{length}}.{fmt}",
            fmt=OTHER_FORMATS,
        ),
    log:
        "logs/figures/passkey_vs_length_{model}_len{length}.log",
    conda:
        "../envs/ropelaw.yaml"
    params:
        study=CFG["study"],
    shell:
        "ropelaw figures passkey_vs_length --evals {input.evals} --cells {input.cells} "
        "--passkey {input.passkey} --study {params.study:q} --model {wildcards.model} "
        "--tune-len {wildcards.length} --out {output} > {log} 2>&1"


rule passkey_heatmap:
    input:
        evals=cell_outputs(),
        cells="results/law/cells.csv",
        passkey="results/law/passkey.csv",
    output:
        figure=report(
            # {seed}: empty, or _seed{s} for a cell of a grid block's seeds list
            f"results/figures/passkey_heatmap_{{model}}_{{method}}_base{{base}}_len{{length}}{{seed,(_seed\\d+)?}}.{REPORTED}",
            caption="../report/passkey_heatmap.rst",
            category="{model}",
            subcategory="{method}",
            labels={
                "figure": "passkey retrieval, depth x length",
                "model": "{model}",
                "method": "{method}",
                "base": "{base}",
                "length": "{length}",
                "seed": "{seed}",
            },
        ),
        others=expand(
            "results/figures/passkey_heatmap_{{model}}_{{method}}_base{{base}}_len{{length}}{{seed}}.{fmt}",
            fmt=OTHER_FORMATS,
        ),
    log:
        "logs/figures/passkey_heatmap_{model}_{method}_base{base}_len{length}{seed}.log",
    conda:
        "../envs/ropelaw.yaml"
    params:
        study=CFG["study"],
        estimator=CFG["law"]["estimator"],
        factor=CFG["law"]["factor"],
    shell:
        "ropelaw figures passkey_heatmap --evals {input.evals} --cells {input.cells} "
        "--passkey {input.passkey} --study {params.study:q} --model {wildcards.model} "
        "--method {wildcards.method} --base {wildcards.base} --tune-len {wildcards.length} "
        "--seed-suffix={wildcards.seed} --out {output} > {log} 2>&1"


rule bound_vs_base:
    input:
        evals=cell_outputs(),
        cells="results/law/cells.csv",
        fit="results/law/fit.csv",
        bootstrap="results/law/bootstrap.csv",
    output:
        figure=report(
            f"results/figures/bound_vs_base.{REPORTED}",
            caption="../report/bound_vs_base.rst",
            category="Law",
            subcategory="Figures",
            labels={
                "figure": "predicted vs measured bound",
                "model": "all",
                "method": "base",
                "base": "all",
                "length": "all",
            },
        ),
        others=expand("results/figures/bound_vs_base.{fmt}", fmt=OTHER_FORMATS),
    log:
        "logs/figures/bound_vs_base.log",
    conda:
        "../envs/ropelaw.yaml"
    params:
        study=CFG["study"],
        estimator=CFG["law"]["estimator"],
        factor=CFG["law"]["factor"],
    shell:
        "ropelaw figures bound_vs_base --evals {input.evals} --cells {input.cells} "
        "--fit {input.fit} --bootstrap {input.bootstrap} --study {params.study:q} "
        "--out {output} > {log} 2>&1"


rule critical_dimension:
    input:
        evals=cell_outputs(),
        cells="results/law/cells.csv",
    output:
        figure=report(
            f"results/figures/critical_dimension.{REPORTED}",
            caption="../report/critical_dimension.rst",
            category="Law",
            subcategory="Figures",
            labels={
                "figure": "the critical dimension",
                "model": "all",
                "method": "all",
                "base": "all",
                "length": "all",
            },
        ),
        others=expand("results/figures/critical_dimension.{fmt}", fmt=OTHER_FORMATS),
    log:
        "logs/figures/critical_dimension.log",
    conda:
        "../envs/ropelaw.yaml"
    params:
        study=CFG["study"],
    shell:
        "ropelaw figures critical_dimension --evals {input.evals} --cells {input.cells} "
        "--study {params.study:q} --out {output} > {log} 2>&1"
