# The law and the figures: cheap aggregation steps, run locally (see localrules in common.smk).


rule law:
    input:
        cell_outputs(),
    output:
        cells=report(
            "results/law/cells.csv", category="Law", caption="../report/cells.rst"
        ),
        fit=report("results/law/fit.csv", category="Law", caption="../report/fit.rst"),
    log:
        "logs/law.log",
    conda:
        "../envs/ropelaw.yaml"
    params:
        factor=CFG["law"]["ppl_factor"],
    shell:
        "ropelaw law --evals {input} --ppl-factor {params.factor} "
        "--out-cells {output.cells} --out-fit {output.fit} > {log} 2>&1"


rule figures:
    input:
        evals=cell_outputs(),
        cells="results/law/cells.csv",
    output:
        report(
            figure_outputs(),
            category="Figures",
            caption="../report/figures.rst",
        ),
    log:
        "logs/figures.log",
    conda:
        "../envs/ropelaw.yaml"
    params:
        study=CFG["study"],
        formats=" ".join(FIGURE_FORMATS),
    shell:
        "ropelaw figures --evals {input.evals} --cells {input.cells} --study {params.study:q} "
        "--out-dir results/figures --formats {params.formats} > {log} 2>&1"
