"""The toy worlds' presets: a world name maps to overrides of the whole run config (world, train, eval)."""
from __future__ import annotations

WORLD_PRESETS: dict[str, dict] = {
    # 100 steps of 16 sequences (RL: 4 prompts x 8 samples): every method saturates or forgets within them on
    # toy (README "Budget"; harness/bench/run_costs.py prints where a run's time goes).
    "toy": {"train": {"max_steps": 100, "batch_size": 16, "micro_batch_size": 16},
            "grpo": {"prompts_per_step": 4}, "trapo": {"prompts_per_step": 4},
            # TMS's teacher at one stated rate, where SFT has left the format dip on every default target, so its
            # checkpoints write fluent answers whatever student rate is swept (README, TMS row).
            "tms": {"teacher_lr": 1e-3}},
    "micro": {
        "world": {
            "tasks": ["sort", "rev", "add", "max"], "n_train": 128, "n_eval": 40, "n_eval_nontarget": 40,
            "n_heldout": 24,
            "model": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128,
                      "max_positions": 48},
            "pretrain": {"steps": 1000, "batch_size": 64, "warmup_steps": 20},
        },
        "train": {"max_steps": 8, "batch_size": 8, "micro_batch_size": 8, "eval_every": 4},
    },
}
