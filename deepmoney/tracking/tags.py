"""Every MLflow tag deepmoney writes or searches by, named once.

Run tags link evaluations to the training they evaluate; model-version tags carry lineage and
the promotion decision; a registered-model tag is the promotion lock.
"""

PREFIX = "deepmoney."

# -- on training runs --------------------------------------------------------------------------
STAGE = "deepmoney.stage"  # pt | sft
FINGERPRINT = "deepmoney.fingerprint"  # the train output's fingerprint (stage.py)
VERSION = "deepmoney.version"  # the deepmoney version that trained it
GIT_REVISION = "deepmoney.git_revision"
MODEL_URI = "deepmoney.model_uri"  # where the trained weights are (the output's final/)
LAST_EVALUATION = "deepmoney.last_evaluation_run_id"
SYNCED_FROM = "deepmoney.synced_from"  # a run uploaded after the fact by `deepmoney track sync`: the output

# -- on evaluation runs ------------------------------------------------------------------------
KIND = "deepmoney.kind"  # "evaluation"
EVALUATION = "evaluation"
INTAKE_CLASSIFIER = "intake-classifier"  # the kind of a run that trained the intake's subjective/objective classifier
EVAL_DIGEST = "deepmoney.eval_digest"  # names the evaluation set: runs with equal digests are comparable
EVALUATED_RUN = "deepmoney.evaluated_run_id"  # the training run evaluated
EVALUATED_MODEL = "deepmoney.evaluated_model"  # what --model named
TOKENIZER_SIZE = "deepmoney.tokenizer_size"  # tokens the model can emit: the uniform-guess perplexity

# -- on model versions (registry) --------------------------------------------------------------
TRAINING_RUN = "deepmoney.training_run_id"
BASE_MODEL = "deepmoney.base_model"
DATA_DIGESTS = "deepmoney.data_digests"
EVAL_SUMMARY = "deepmoney.eval_summary"
DECISION = "deepmoney.decision"
DECISION_REASONS = "deepmoney.decision_reasons"
COMPARED_WITH = "deepmoney.compared_with"
CANDIDATE_METRICS = "deepmoney.candidate_metrics"
CHAMPION_METRICS = "deepmoney.champion_metrics"
DECIDED_AT = "deepmoney.decided_at"

# -- on registered models ----------------------------------------------------------------------
PROMOTION_LOCK = "deepmoney.promotion_lock"
