"""What a sweep shows while it runs: in a terminal one live display (rich) redrawn in place; in a log
(a file, CI, `nohup`) one line per finished or failed run and a one-line summary with the ETA now and then.

Workers report through the hooks of sweeps/progress_events.py into a sink: the display (`handle`) when the
sweep runs in this process, a multiprocessing queue drained by the display otherwise.
Trial counts come from the Optuna storage, so trials run by other processes or machines count too.
"""
from __future__ import annotations

import datetime as dt
import math
import os
import sys
import threading
import time
from typing import Any, TextIO

import optuna
from optuna.trial import TrialState

from harness import metric_names as N
from sweeps.spec import SweepSpec, arm_seeds, arm_trials

SUMMARY_EVERY_S = 60.0
POLL_EVERY_S = 3.0  # the storage is re-read at most this often (a journal file is replayed on each read)

def is_terminal(stream: TextIO) -> bool:
    """True where a display can redraw in place (a terminal that understands cursor movement)."""
    return stream.isatty() and os.environ.get("TERM") != "dumb"


def _fmt_lr(lr: Any) -> str:
    return f"{lr:.1e}" if isinstance(lr, (int, float)) else "-"


def _fmt_min(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def run_line(ev: dict, done: int, total: int) -> str:
    """The log line of one finished, reused or failed run."""
    seed = "-" if ev.get("seed") is None else ev["seed"]
    head = (f"{ev['arm']:<14} trial {ev['trial']:<3} seed {seed:<2} lr {_fmt_lr(ev.get('lr'))}")
    if ev["event"] == "failed":
        return f"FAILED {head}  after {ev['seconds']:.1f} s: {ev.get('reason', '')}"[:300]
    gain, drop = ev.get("gain"), ev.get("drop")
    gd = f"gain {gain:+6.1f}  drop {drop:+6.1f}" if gain is not None and drop is not None else "gain -  drop -"
    what = "reused" if ev["event"] == "reused" else "done  "
    return f"{what} {head}  {gd}  {ev['seconds']:6.1f} s  ({done}/{total} runs)"


class SweepProgress:
    """The sweep's display; feed it events with `handle` (thread-safe), use it as a context manager."""

    def __init__(self, spec: SweepSpec, arms: list[str], storage: optuna.storages.BaseStorage, workers: int,
                 live: bool | None = None, stream: TextIO | None = None, summary_every_s: float = SUMMARY_EVERY_S):
        self.spec, self.arms, self.storage, self.workers = spec, arms, storage, max(1, workers)
        self.stream = stream or sys.stdout
        self.live = is_terminal(self.stream) if live is None else live
        self.summary_every_s = summary_every_s
        self.seeds = {a: len(arm_seeds(spec, a)) for a in arms}
        self.lock = threading.RLock()
        self.started = time.time()
        self.running: dict[tuple[str, int], dict] = {}   # (arm, trial) -> start event
        self.partial: dict[tuple[str, int], int] = {}    # seeds finished so far of trials still running
        self.seconds: dict[str, list[float]] = {a: [] for a in arms}  # per-run seconds trained in this session
        self._out = threading.Lock()  # one line at a time on the stream (never held while rendering)
        self._counts: dict[str, dict] = {}
        self._polled = 0.0
        self._last_summary = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live = None
        self._console = None

    # ---- state
    def _poll(self, force: bool = False) -> dict[str, dict]:
        """Per arm: trial counts by state and the finished trials' (gain, drop), re-read at most every few s.

        Runs of trials the storage does not yet show finished are counted from events (`partial`)."""
        if not force and time.time() - self._polled < POLL_EVERY_S and self._counts:
            return self._counts
        counts = {}
        for arm in self.arms:
            try:
                trials = optuna.load_study(study_name=f"{self.spec.name}-{arm}", storage=self.storage).get_trials(
                    deepcopy=False)
            except Exception:  # not created yet, or the storage is busy: keep what was shown
                counts[arm] = self._counts.get(arm, {"n": {}, "points": [], "slots": arm_trials(self.spec, arm)})
                continue
            n = {s: sum(t.state == s for t in trials) for s in TrialState}
            for t in trials:   # from now on the storage counts these trials' runs
                if t.state in (TrialState.COMPLETE, TrialState.FAIL):
                    self.partial.pop((arm, t.number), None)
            points = []
            for t in trials:
                if t.state != TrialState.COMPLETE:
                    continue
                g, d = t.user_attrs.get(N.TARGET_GAIN), t.user_attrs.get(N.NONTARGET_DROP)
                if g is None and t.values and len(t.values) == 2:
                    g, d = t.values
                if g is not None and d is not None:
                    points.append((float(g), float(d)))
            slots = max(arm_trials(self.spec, arm), n[TrialState.COMPLETE] + n[TrialState.RUNNING] + n[TrialState.WAITING])
            counts[arm] = {"n": n, "points": points, "slots": slots}
        self._counts, self._polled = counts, time.time()
        return counts

    def _totals(self, fresh: bool = False) -> dict[str, Any]:
        c = self._poll(force=fresh)
        get = lambda arm, s: c[arm]["n"].get(s, 0)  # noqa: E731
        done = sum(get(a, TrialState.COMPLETE) for a in self.arms)
        slots = sum(c[a]["slots"] for a in self.arms)
        running = sum(get(a, TrialState.RUNNING) for a in self.arms)
        failed = sum(get(a, TrialState.FAIL) for a in self.arms)
        waiting = sum(get(a, TrialState.WAITING) for a in self.arms)
        runs_total = sum(c[a]["slots"] * self.seeds[a] for a in self.arms)
        runs_done = sum(get(a, TrialState.COMPLETE) * self.seeds[a] for a in self.arms)
        runs_done += sum(k for (a, _), k in self.partial.items() if a in self.seeds)
        every = [s for v in self.seconds.values() for s in v]
        left = 0.0
        for a in self.arms:
            per_run = (sum(self.seconds[a]) / len(self.seconds[a]) if self.seconds[a]
                       else sum(every) / len(every) if every else math.nan)
            # every unfinished slot, asked or not: workers ask an arm's trials only when they reach the arm
            todo = max(0, c[a]["slots"] - get(a, TrialState.COMPLETE) - get(a, TrialState.FAIL)) * self.seeds[a]
            todo -= sum(k for (b, _), k in self.partial.items() if b == a)
            left += max(0, todo) * per_run if todo > 0 else 0.0
        return {"done": done, "slots": slots, "running": running, "failed": failed, "waiting": waiting,
                "runs_done": runs_done,
                "runs_total": runs_total, "left_s": left / self.workers}

    def summary_line(self, fresh: bool = False) -> str:
        """One line: trials and runs done, running, failed, elapsed and the ETA (`fresh`: re-read the storage)."""
        with self.lock:
            t = self._totals(fresh)
        elapsed = time.time() - self.started
        if not t["waiting"] and not t["running"]:
            eta = "nothing left"
        elif math.isnan(t["left_s"]):
            eta = "ETA after the first run finishes"
        else:
            at = (dt.datetime.now() + dt.timedelta(seconds=t["left_s"])).strftime("%H:%M")
            eta = f"about {_fmt_min(t['left_s'])} left (ETA {at})"
        return (f"sweep {self.spec.name!r}: {t['done']}/{t['slots']} trials done ({t['runs_done']}/{t['runs_total']} "
                f"runs), {t['running']} running, {t['failed']} failed; elapsed {_fmt_min(elapsed)}, {eta}")

    # ---- events
    def handle(self, ev: dict) -> None:
        """Take one event from a worker: update the state and, for a finished run, write its line."""
        with self.lock:
            key = (ev["arm"], ev["trial"])
            if ev["event"] == "start":
                self.running[key] = ev | {"t0": time.time()}
                return
            self.running.pop(key, None)
            if ev["event"] == "failed":
                self.partial.pop(key, None)
            else:
                self.partial[key] = self.partial.get(key, 0) + 1
                if ev["event"] == "done" and ev["arm"] in self.seconds:
                    self.seconds[ev["arm"]].append(float(ev["seconds"]))
            self._polled = 0.0   # a trial may have changed state: re-read on the next look
            t = self._totals()
            line = run_line(ev, t["runs_done"], t["runs_total"])
        self._write(line)   # outside the lock: rich's refresh thread holds its own lock while it renders

    def _write(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        live = self._live
        if live is not None:
            from rich.text import Text
            live.console.print(Text.assemble((stamp, "dim"), " ", line), highlight=False, soft_wrap=True)
        else:
            with self._out:
                print(f"{stamp} {line}", file=self.stream, flush=True)

    def tick(self) -> None:
        """Periodic work: in a log, the summary line once every `summary_every_s`."""
        with self.lock:   # the ticker thread and the main loop may both call this
            due = self._live is None and time.time() - self._last_summary >= self.summary_every_s
            if due:
                self._last_summary = time.time()
        if due:
            self._write(self.summary_line(fresh=True))

    # ---- the live display
    def _render(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        with self.lock:
            c = self._poll()
            table = Table(box=None, pad_edge=False, header_style="bold")
            for col in ("arm", "done", "running", "failed", "waiting", "front (gain, drop)"):
                table.add_column(col, justify="left" if col in ("arm", "front (gain, drop)") else "right")
            for a in self.arms:
                n = c.get(a, {}).get("n", {})
                pts = sorted(c.get(a, {}).get("points", []), key=lambda p: (-p[0], p[1]))
                front, best_drop = [], math.inf
                for g, d in pts:   # highest gain first: keep a point only if it lowers the drop
                    if d < best_drop:
                        front.append(f"({g:+.1f}, {d:+.1f})")
                        best_drop = d
                table.add_row(a, f"{n.get(TrialState.COMPLETE, 0)}/{c.get(a, {}).get('slots', arm_trials(self.spec, a))}",
                              str(n.get(TrialState.RUNNING, 0)), str(n.get(TrialState.FAIL, 0)),
                              str(n.get(TrialState.WAITING, 0)), " ".join(front[:4]))
            now = time.time()
            running = [f"{a} t{t} s{ev['seed']} lr {_fmt_lr(ev.get('lr'))} ({now - ev['t0']:.0f} s)"
                       for (a, t), ev in sorted(self.running.items())]
        head = Text(self.summary_line(), style="bold")
        parts = [head, table]
        if running:
            parts.append(Text("running: " + " · ".join(running), style="cyan", overflow="ellipsis", no_wrap=True))
        return Group(*parts)

    def __enter__(self) -> "SweepProgress":
        total = sum(arm_trials(self.spec, a) * self.seeds[a] for a in self.arms)
        def n(k: int, word: str) -> str:
            return f"{k} {word}{'' if k == 1 else 's'}"
        intro = (f"sweep {self.spec.name!r} on world {self.spec.world}: {n(len(self.arms), 'arm')} x "
                 f"{n(self.spec.trials, 'trial')}, {n(total, 'run')}, {n(self.workers, 'worker')}")
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._console = Console(file=self.stream)
            self._console.print(intro, highlight=False)
            self._live = Live(get_renderable=self._render, console=self._console, refresh_per_second=2,
                              transient=False, redirect_stdout=True, redirect_stderr=True)
            self._live.start()
        else:
            print(f"{intro}; one line per finished run, a summary every {self.summary_every_s:.0f} s",
                  file=self.stream, flush=True)
            print(self.summary_line(fresh=True), file=self.stream, flush=True)
            self._thread = threading.Thread(target=self._ticker, daemon=True)
            self._thread.start()
        return self

    def _ticker(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.tick()
            except Exception:  # never take the sweep down for its display
                pass

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._polled = 0.0
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None
        else:
            print(self.summary_line(fresh=True), file=self.stream, flush=True)
