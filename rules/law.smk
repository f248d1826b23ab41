# The law and the figures: cheap aggregation steps, run locally (see localrules in common.smk).


rule law:
    input:
        evals=cell_outputs(),
        passkey=passkey_outputs(),
    output:
        cells=report(
            "results/law/cells.csv", category="Law", caption="../report/cells.rst"
        ),
        fit=report("results/law/fit.csv", category="Law", caption="../report/fit.rst"),
        passkey=report(
            "results/law/passkey.csv", category="Law", caption="../report/passkey.rst"
        ),
    log:
        "logs/law.log",
    conda:
        "../envs/ropelaw.yaml"
    params:
        factor=CFG["law"]["ppl_factor"],
    shell:
        "ropelaw law --evals {input.evals} --passkey {input.passkey} --ppl-factor {params.factor} "
        "--out-cells {output.cells} --out-fit {output.fit} --out-passkey {output.passkey} > {log} 2>&1"


rule figures:
    input:
        evals=cell_outputs(),
        cells="results/law/cells.csv",
        passkey="results/law/passkey.csv",
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
        "ropelaw figures --evals {input.evals} --cells {input.cells} --passkey {input.passkey} "
        "--study {params.study:q} "
        "--out-dir results/figures --formats {params.formats} > {log} 2>&1"
