"""MLflow tag and metric-key names: defined here once, used by every writer (pipeline,
launch, study) and every reader (leaderboard). Nobody else spells a ``harness.*`` string."""
from __future__ import annotations

# Identity of a run: what was trained, on what, how.
METHOD = "harness.method"
RECIPE = "harness.recipe"
BACKBONE = "harness.backbone"
WIDTH = "harness.width"
SUITE = "harness.suite"
SEED = "harness.seed"
EPOCHS = "harness.epochs"
CONFIG_HASH = "harness.config_hash"
# The config hash without the seed: the seeds of one command share it (one entry, one config).
CONFIG_ID = "harness.config_id"
METHOD_FAMILY = "harness.method_family"
BASELINE = "harness.baseline"  # "floor" / "ceiling" for baseline methods

# Provenance: how to re-run it, where it ran.
COMMAND = "harness.command"
INVOCATION = "harness.invocation"
GIT_COMMIT = "harness.git_commit"
GIT_DIRTY = "harness.git_dirty"
DATASET_HASH = "harness.dataset_hash"
DEVICE = "harness.device"
DETERMINISTIC = "harness.deterministic"
VERSIONS = "harness.versions"
SLURM_JOB_ID = "harness.slurm_job_id"
OUTPUT_DIR = "harness.output_dir"
CODE_DIR = "harness.code_dir"
WORLD_SIZE = "harness.world_size"
GLOBAL_BATCH = "harness.global_batch"
PER_PROCESS_BATCH = "harness.per_process_batch"
LR_SCALING = "harness.lr_scaling"
RESUMED_FROM_STEP = "harness.resumed_from_step"
LAUNCHER = "harness.launcher"
SWEEP_ID = "harness.sweep_id"

# Which stage a run is, and for an eval, its protocol, preset and metric declarations.
STAGE = "harness.stage"
EVAL = "harness.eval"
PROTOCOL = "harness.protocol"
PRESET = "harness.preset"
# JSON: the eval's declared metrics (name, direction, unit) and its headline, so a reader
# ranks results correctly without importing (or even having installed) the eval's code.
METRICS = "harness.metrics"

# Studies.
STUDY_ID = "harness.study_id"
STUDY_KIND = "harness.study_kind"
STUDY_WIDTH = "harness.study_width"
STUDY_GRID = "harness.study_grid"
STUDY_METRIC = "harness.metric"
STUDY_DIRECTION = "harness.study_direction"  # "higher" or "lower": how the study ranked

# MLflow's own tag linking a child run (an eval) to its parent (the pretraining).
PARENT_RUN = "mlflow.parentRunId"

# Values of STAGE.
STAGE_PRETRAIN = "pretrain"
STAGE_EVAL = "eval"
STAGE_STUDY = "study"

# Metric keys the pipeline and trainer log (besides each eval's own metrics).
TRAIN_PREFIX = "train/"
TRAIN_LOSS = TRAIN_PREFIX + "loss"

EXPERIMENT = "ssl-harness"


def stage_filter(stage: str) -> str:
    """An MLflow search filter for runs of one stage."""
    return f"tags.`{STAGE}` = '{stage}'"
