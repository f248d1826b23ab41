# ropelaw: Scaling Laws of RoPE-based Extrapolation, as a workflow.
# Run: snakemake --cores 2  (embedded default)  |  snakemake --profile profiles/slurm --configfile config/paper.yaml
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/finetune.smk"
include: "rules/evaluate.smk"
include: "rules/passkey.smk"
include: "rules/law.smk"
include: "rules/corpus.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
