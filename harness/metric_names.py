"""The names of what a run logs to MLflow, defined once: the engine writes them, sweeps and reports read them back.

Definitions in DESIGN.md ("Metrics"). Never rename one: stores and reports of earlier runs are read by these names.
Namespaces: `acc/<task>`, `drop/<task>` per task, `val/` before any of them for the validation split (what every
selection reads; unprefixed names are the eval split, what every report shows), `train/<stat>` for the loop's and
the method's statistics by step, `cost/...` for the run's cost.
"""
from __future__ import annotations

TARGET_GAIN = "target_gain"  # acc_T(θ) − acc_T(θ₀), points
NONTARGET_DROP = "nontarget_drop"  # mean over non-target tasks of acc_j(θ₀) − acc_j(θ), points; > 0 is forgetting
PLD = "pld"  # mean per-token NLL of the held-out expert labels, nats/token
PLD_DRIFT = "pld_drift"  # pld(θ_t) − pld(θ₀)
PLD_RISE = "pld_rise"  # pld(θ_t) − min over s ≤ t of pld(θ_s)
KL_TO_BASE = "kl_to_base"  # KL(π₀ ‖ π_θ) summed over a base response, nats/response

LO, HI = "_lo", "_hi"  # suffixes of a quantity's 95% paired-bootstrap interval
TARGET_GAIN_LO, TARGET_GAIN_HI = TARGET_GAIN + LO, TARGET_GAIN + HI
NONTARGET_DROP_LO, NONTARGET_DROP_HI = NONTARGET_DROP + LO, NONTARGET_DROP + HI
GAIN_DROP_CIS = (TARGET_GAIN, TARGET_GAIN_LO, TARGET_GAIN_HI, NONTARGET_DROP, NONTARGET_DROP_LO, NONTARGET_DROP_HI)

VAL = "val/"  # prefix of every validation-split metric
VAL_TARGET_GAIN, VAL_NONTARGET_DROP = VAL + TARGET_GAIN, VAL + NONTARGET_DROP
ACC, DROP = "acc/", "drop/"  # + task name: one task's accuracy, one non-target task's drop
TRAIN = "train/"  # + a statistic of the training step (loss, lr, grad_norm, the method's own)
DATA_PHI = TRAIN + "data_phi"  # mean φ = log p + H of the trained tokens (the engine's `data_phi` statistic)

BASE = "base/"  # the base run's NLLs of the teacher's labels and of its own answers, per token and per answer
BASE_LABEL_NLL_TOKEN, BASE_LABEL_NLL_SEQ = BASE + "label_nll_token", BASE + "label_nll_seq"
BASE_OWN_NLL_TOKEN, BASE_OWN_NLL_SEQ = BASE + "own_nll_token", BASE + "own_nll_seq"

RECORD = "record/"  # before acc/<task> (val/acc/<task>): the evaluation of record of a checkpoint
RECORD_AGREEMENT = RECORD + "agreement"  # fraction of examples on which it agrees with the in-run evaluation

COST = "cost/"
COST_TRAIN_TOKENS, COST_GEN_TOKENS = COST + "train_tokens", COST + "gen_tokens"
COST_TRAIN_S, COST_GEN_S, COST_EVAL_S, COST_WALL_S = (COST + "train_s", COST + "gen_s", COST + "eval_s",
                                                      COST + "wall_s")
COST_SECONDS = (COST_TRAIN_S, COST_GEN_S, COST_EVAL_S, COST_WALL_S)
COST_FLOPS = COST + "flops"  # every pass the run made; COST_FLOPS + "_<kind>" per kind of pass

# A sweep's Optuna trials carry the mean over seeds of the eval and validation gain and drop as user attributes
# (and name their objective values) with `val_` for `val/`; the parent run's pareto.json repeats them.
TRIAL_VAL_TARGET_GAIN, TRIAL_VAL_NONTARGET_DROP = "val_" + TARGET_GAIN, "val_" + NONTARGET_DROP


def acc(task: str) -> str:
    """The name of one task's accuracy."""
    return ACC + task


def drop(task: str) -> str:
    """The name of one non-target task's drop."""
    return DROP + task
