"""TMS: Trajectory-Mixed Supervision (reward-free, approximately on-policy self-distillation).

Idea: SFT forgets because the moving policy drifts away from static labels
(Policy-Label Divergence). TMS replaces most labels by the answers of the
model's own SFT checkpoints, a target much closer to the student's policy.
Data, in three stages inside the first `data()` call:
  1. teacher: ordinary SFT from θ0 on the static expert labels for
     `teacher_steps` steps at peak `teacher_lr` (outside the evaluated
     trajectory, logged under `teacher/`), snapshotting θ_1..θ_T evenly
     spaced over the run (θ0 excluded), written in `snapshot_dtype`;
  2. harvest, as each snapshot is written: every student epoch is drawn up
     front (below); the snapshot, loaded alone, samples one answer at
     `temperature` for each prompt drawn to it, with no verifier filter, and
     is deleted at once;
  3. student: the policy is reset to θ0 (weights, optimizer and schedule) and
     trains on q_α = α·q + (1−α)·m: every epoch (every later `data()` call),
     each prompt gets its expert label with probability α, else the answer of a
     checkpoint t ~ Uniform{1..T}, drawn afresh with the run's rng.
Loss: token-mean NLL −(1/N_tok) Σ log π_θ(y_t | x, y_<t), as SFT (the engine
reduces), for the teacher and the student alike.
Paper: Khan, Liu, Tan, Fleming, Chen, "TMS: Trajectory-Mixed Supervision",
arXiv 2602.03073 (code not available; T=10, α=0.25, uniform mixture and the
forward-KL student come from third-party notes, METHODS.md §5).
Deviations / GUESSes: checkpoint spacing (evenly in steps, θ0 excluded; duplicate
steps when teacher_steps < checkpoints are merged), temperature 1.0,
teacher_steps = the run's budget, the teacher's learning rate and schedule =
the run's (so sweeping `train.lr` moves teacher and student alike unless
`teacher_lr` is set), student from θ0 with the SFT baseline's optimizer
settings, and the `early_first` curriculum ablation are ours. Snapshots are
bf16 by default (the paper's precision is not known; float32 reproduces the
policy exactly). Expert labels are verifier-filtered by default like SFT's and
IDFT's (`filter_labels`: the three train on one label set; false is the
paper's verifier-free setting); otherwise the verifier only scores the harvest
for logging (`mixture_acc`). Unfinished samples (no end token) are kept, as
the method has no filter.
"""
from __future__ import annotations

import gc
import math
from typing import Literal

import numpy as np
from pydantic import Field

from harness.data import Example, TrainData
from harness.modeling import DTYPES
from harness.phase_cache import reuse
from harness.method import LossOutput, Method, SweepParam, register
from methods._sft_family import ExpertLabelConfig, expert_examples, expert_items, nll_loss
from methods._tms_mixture import checkpoint_steps, draw_epochs, drawn_prompts, mix, teacher_phase_inputs
from methods.common import sample_and_verify


class TMSConfig(ExpertLabelConfig):
    checkpoints: int = Field(10, ge=1)
    """T: teacher checkpoints whose samples form the mixture (paper: 10; best 8-10)."""
    alpha: float = Field(0.25, ge=0, le=1)
    """Probability of the static expert label when a prompt is drawn (paper: 0.25)."""
    teacher_steps: int | None = Field(None, ge=1)
    """Optimizer steps of the teacher SFT run (GUESS; None: the run's budget train.max_steps, like SFT)."""
    teacher_lr: float | None = Field(None, gt=0)
    """Peak learning rate of the teacher SFT run (GUESS; None: the run's train.lr, the teacher then moves with
    the swept student learning rate)."""
    temperature: float = Field(1.0, ge=0)
    """Harvest temperature: how the checkpoints sample their answers (NOT FOUND; GUESS 1.0; 0 is greedy)."""
    snapshot_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """dtype the teacher snapshots are written in (bfloat16 halves their size; float32 keeps the weights exact).
    They are loaded for sampling in train.frozen_dtype."""
    scratch_dir: str | None = None
    """Folder for the teacher snapshots (None: the run's temporary folder); one is on disk at a time, and what
    the run writes there is removed when it ends."""
    reuse_teacher: bool = True
    """Reuse the teacher phase (teacher run and harvest) of an earlier run with identical inputs, e.g. the same
    seed at another student rate with `teacher_lr` set (harness.phase_cache): same samples, cost and logs, less
    time. Cached under the world's cache folder, keyed by the inputs and the harness's code."""
    schedule: Literal["uniform", "early_first"] = "uniform"
    """Checkpoint choice: uniform (paper), or early_first (ablation, GUESS): weight ∝ (1−p)(T−t+1) + p at
    student progress p = step/max_steps, i.e. early checkpoints favoured at the start, uniform at the end."""


@register
class TMS(Method):
    name = "tms"
    description = "SFT teacher run, then SFT of a fresh student on its checkpoints' own samples mixed with labels"
    paper = "Trajectory-Mixed Supervision, arXiv 2602.03073"
    order = 4
    Config = TMSConfig
    smoke = {"checkpoints": 2, "teacher_steps": 2}
    sweep = {"train.lr": SweepParam(1e-4, 1e-3), "tms.alpha": SweepParam(choices=(0.0, 0.25, 0.5))}

    def data(self, ctx, phase: int) -> TrainData:
        if not hasattr(self, "_answers"):
            self._harvest(ctx)
        epoch = mix(self._expert, self._answers, self._plans[self._epoch % len(self._plans)])
        self._epoch += 1
        ctx.log({"expert_frac": sum(e.source == "expert" for e in epoch) / max(1, len(epoch))})
        return TrainData(epoch)

    def _harvest(self, ctx) -> None:
        """Teacher SFT run whose snapshots are harvested as they are written, then the reset to θ0.

        The teacher's batches and then every epoch the student will see are drawn up front, in the order the
        run's rng always drew them, so each snapshot samples only the prompts assigned to it (one answer per
        (prompt, snapshot), reused if drawn again, as with a full harvest): about (1 − α)·(examples trained)
        samples instead of T·N, from the same distribution, with one snapshot on disk at a time.
        """
        c = self.cfg
        items = expert_items(ctx, c.filter_labels)
        self._expert = expert_examples(ctx, items)
        steps = c.teacher_steps or ctx.max_steps
        at = checkpoint_steps(steps, c.checkpoints)
        teacher = ctx.draw_batches(TrainData(self._expert), steps)
        per_epoch = math.ceil(len(items) / ctx.run_cfg.train.batch_size)
        self._plans = draw_epochs(len(items), c.alpha, len(at), c.schedule, per_epoch, ctx.max_steps, ctx.rng)
        self._epoch = 0
        folder = ctx.scratch_dir(c.scratch_dir)
        needs = drawn_prompts(self._plans, len(at))

        def teach_and_harvest() -> tuple[list[dict[int, Example]], list[float]]:
            answers, accs = [], []

            def harvest(done: int) -> None:
                if done not in at:
                    return
                t = len(answers)
                path = ctx.save_checkpoint(f"tms-teacher-{done:06d}", DTYPES[c.snapshot_dtype], folder)
                sampler = ctx.sampler_for(path, lambda: ctx.load_checkpoint(path))
                sampled = sample_and_verify(ctx, [items[i] for i in needs[t]], n=1, temperature=c.temperature,
                                            sampler=sampler)
                del sampler
                gc.collect()
                ctx.delete_checkpoint(path)
                answers.append({i: Example(s.completions[0].prompt_ids, s.completions[0].response_ids,
                                           task=s.item.task, source=f"ckpt{t + 1}") for i, s in zip(needs[t], sampled)})
                accs.append(float(np.mean([s.rewards[0] for s in sampled])) if sampled else float("nan"))

            ctx.train_steps(teacher, self.loss, prefix="teacher", on_step=harvest, lr=c.teacher_lr)
            return answers, accs

        inputs = teacher_phase_inputs(ctx, c, needs, teacher)
        (self._answers, accs), reused = reuse(ctx, "tms-teacher", inputs, teach_and_harvest, enabled=c.reuse_teacher)
        ctx.reset_to_base()
        ctx.log({"teacher_steps": float(steps), "checkpoints": float(len(self._answers)),
                 "harvested": float(sum(map(len, self._answers))), "teacher_reused": float(reused),
                 "mixture_acc": float(np.nanmean(accs)), **{f"ckpt{t}_acc": a for t, a in enumerate(accs, 1)}})

    def loss(self, ctx, batch) -> LossOutput:
        return nll_loss(batch.logp, batch.loss_mask)                        # [B, T-1] −log π_θ
