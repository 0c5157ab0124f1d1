"""The sequential scheme's decisions: when a stage ends, when training collapsed. PURE.

The scheduler visits ``stages`` (e.g. RL -> DPO -> SFT) in order, ``passes`` times. Each visit
runs chunks of updates; after every chunk the shell reports the tracked reward (mean critic
value of the aligned model's samples on fixed held-out contexts), the chunk's mean loss and
its share of skipped (non-finite) updates, and :func:`decide` answers:

* ``continue``: keep going with this stage;
* ``advance``: the stage is done: its reward *plateaued* (no gain for ``patience`` chunks
  after the visit's first good chunk, and at least ``min_chunks``), it hit
  ``max_chunks``, or it collapsed more than ``max_rollbacks`` times;
* ``rollback``: the chunk *collapsed*: non-finite reward or loss, more than
  ``max_nonfinite`` of its updates skipped, a loss spike (``|loss| > spike_factor`` times the
  median of the visit's earlier ``|loss|``), or a reward drop: the tracked mean more than
  ``drop_tol`` standard errors below the visit's best, where the standard error is that of
  the *paired* change on the same held-out contexts (``std(r_i - best_i) / sqrt(n)``, from
  the per-context values the shell passes as ``values``), *and* by more than ``drop_min *
  scale`` (a minimum size, so that a statistically certain but negligible dip does not halve
  the learning rate). The spread of Q across states, which dominates the unpaired std,
  cancels in the pair, so a real drop of the policy is seen even when it is small next to
  that spread. The shell restores the last good checkpoint and multiplies the learning rate by
  ``lr_decay``: of this and every later stage, for the rest of the run
  (``lr_decay_scope="run"``, the default, the rule the Nav1D tables were measured with), or
  of this stage only (``"stage"``: a U-Net whose PPO step was too large otherwise leaves DPO
  at 1/8 and SFT at 1/16 of their own learning rates, though neither collapsed; not yet
  measured on the grid);
* ``finish``: the last stage of the last pass is done.

A chunk is a *gain* when its tracked reward beats the visit's best by more than ``gain_se``
standard errors of the paired change on the same held-out contexts (the unit of the drop
test), or, without per-context values, by more than ``tol * scale``. ``scale`` (the spread
of Q across states) made the gain test as blind as the old drop test: a visit climbing
0.06-0.12 per chunk, many paired SEs each, read as a plateau at 0.02 x scale = 0.12-0.2.

Every visit starts with ``best`` = the tracked reward of the adapters it starts from
(:func:`start_visit`), so a visit whose first chunk lowers the reward is rolled back too,
to where the visit began. When the critic itself changes between chunks (online
fine-tuning), the shell re-scores the best adapters under the new critic
(:func:`rescore_best`) before the next decision.

A visit ends on its best adapters by the tracked reward (the shell keeps them; the
visit's start when no chunk beat it), not on its last chunk.

After each visit the shell also measures the environment return (and success, where the env
reports it) on the curve's fixed episode seeds, and :func:`env_guard` says whether to *revert*
the whole visit (restore the adapters it started from): the critic can be exploited, so its
value alone cannot see every collapse.

``scale`` is the spread (std) of the tracked reward at the start, so that ``tol`` does not
depend on the critic's units (and ``drop_tol`` when no per-context values are given). The state is a small JSON-able dataclass
that the shell saves with every checkpoint (the scheduler's position and rollback history).
"""
import dataclasses
import math
from typing import Mapping, Optional, Tuple

import numpy as np


LR_DECAY_SCOPES = ("stage", "run")


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
  stages: Tuple[str, ...] = ("rl", "dpo", "sft")
  passes: int = 2
  min_chunks: int = 2
  max_chunks: int = 8
  patience: int = 2
  tol: float = 0.02
  gain_se: float = 2.0
  drop_tol: float = 3.0
  drop_min: float = 0.05
  spike_factor: float = 10.0
  max_nonfinite: float = 0.5
  lr_decay: float = 0.5
  lr_decay_scope: str = "run"
  max_rollbacks: int = 3

  def __post_init__(self):
    if not self.stages:
      raise ValueError("the scheduler needs at least one stage")
    if self.passes < 1 or self.min_chunks < 1 or self.max_chunks < self.min_chunks:
      raise ValueError(f"need passes >= 1 and 1 <= min_chunks <= max_chunks, got {self}")
    if not self.gain_se >= 0:
      raise ValueError(f"gain_se must be >= 0, got {self.gain_se}")
    if not 0 < self.lr_decay <= 1:
      raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
    if self.lr_decay_scope not in LR_DECAY_SCOPES:
      raise ValueError(f"lr_decay_scope must be one of {LR_DECAY_SCOPES}, got "
                       f"{self.lr_decay_scope!r}")


@dataclasses.dataclass(frozen=True)
class SchedulerState:
  pass_idx: int = 0
  stage_idx: int = 0
  chunk: int = 0                  # chunks decided in this stage visit (rollbacks included)
  best: Optional[float] = None    # best tracked reward in this visit
  best_values: Tuple[float, ...] = ()  # its per-context values (paired drop test)
  since_best: int = 0
  losses: Tuple[float, ...] = ()  # |loss| of the visit's good chunks
  rollbacks: int = 0              # in this visit
  total_rollbacks: int = 0
  lr_scale: float = 1.0           # product of every rollback's decay (scope "run")
  stage_lr_scales: Tuple[float, ...] = ()  # per stage index (scope "stage"; missing = 1)
  scale: float = 1.0              # spread of the tracked reward at the start
  done: bool = False

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> "SchedulerState":
    d = dict(d)
    d["losses"] = tuple(d.get("losses", ()))
    d["best_values"] = tuple(d.get("best_values", ()))
    d["stage_lr_scales"] = tuple(d.get("stage_lr_scales", ()))
    return cls(**d)


def init_state(reward_scale: float) -> SchedulerState:
  scale = float(reward_scale) if np.isfinite(reward_scale) and reward_scale > 0 else 1.0
  return SchedulerState(scale=scale)


def start_visit(state: SchedulerState, reward: float, values=None) -> SchedulerState:
  """The visit's first ``best``: the tracked reward of the adapters the visit starts from
  (``values``: per context). Without it the first chunk's reward became the best whatever
  it was, so a first chunk that already lowered the reward was never seen as a drop (the
  Nav1D Diffuser RL visit fell 2.43 -> 0.02 in its first chunk, and every later rollback
  went back to that damaged state)."""
  if not math.isfinite(reward):
    raise ValueError(f"the tracked reward at the start of a visit is not finite ({reward})")
  best_values = () if values is None else tuple(float(v) for v in np.asarray(values))
  return dataclasses.replace(state, best=float(reward), best_values=best_values,
                             since_best=0)


def rescore_best(state: SchedulerState, values) -> SchedulerState:
  """The visit's best re-scored under a critic that changed (online fine-tuning): ``values``
  are the best adapters' tracked rewards per context under the *new* critic, so that the next
  drop test compares two policies under one critic, not one policy under two critics."""
  if state.best is None:
    return state
  v = np.asarray(values, np.float64)
  if not np.all(np.isfinite(v)):
    raise ValueError("the re-scored best is not finite")
  return dataclasses.replace(state, best=float(v.mean()),
                             best_values=tuple(float(x) for x in v))


def stage(cfg: SchedulerConfig, state: SchedulerState) -> str:
  return cfg.stages[state.stage_idx]


def lr_scale(cfg: SchedulerConfig, state: SchedulerState) -> float:
  """The factor on the current stage's learning rate that its rollbacks left (scope
  ``"stage"``), or that every rollback so far left (scope ``"run"``)."""
  if cfg.lr_decay_scope == "run":
    return state.lr_scale
  scales = state.stage_lr_scales
  return scales[state.stage_idx] if state.stage_idx < len(scales) else 1.0


def _decayed(cfg: SchedulerConfig, s: SchedulerState) -> SchedulerState:
  n = max(len(cfg.stages), len(s.stage_lr_scales))
  scales = list(s.stage_lr_scales) + [1.0] * (n - len(s.stage_lr_scales))
  scales[s.stage_idx] *= cfg.lr_decay
  return dataclasses.replace(s, lr_scale=s.lr_scale * cfg.lr_decay,
                             stage_lr_scales=tuple(scales))


def _advance(cfg, s: SchedulerState) -> SchedulerState:
  stage_idx, pass_idx = s.stage_idx + 1, s.pass_idx
  if stage_idx == len(cfg.stages):
    stage_idx, pass_idx = 0, pass_idx + 1
  return dataclasses.replace(s, stage_idx=stage_idx, pass_idx=pass_idx, chunk=0, best=None,
                             best_values=(), since_best=0, losses=(), rollbacks=0,
                             done=pass_idx >= cfg.passes)


def paired_se(values, best_values) -> Optional[float]:
  """Standard error of the mean paired change ``values - best_values`` (same contexts), or
  ``None`` when there is nothing to pair."""
  if values is None or not len(best_values):
    return None
  v, b = np.asarray(values, np.float64), np.asarray(best_values, np.float64)
  if v.shape != b.shape or v.size < 2:
    raise ValueError(f"paired values have shapes {v.shape} and {b.shape}; both must be the "
                     "same held-out contexts (at least 2)")
  return float(np.std(v - b, ddof=1) / math.sqrt(v.size))


def collapse_reason(cfg: SchedulerConfig, s: SchedulerState, reward: float, loss: float,
                    nonfinite: float, values=None) -> Optional[str]:
  """Why this chunk counts as a collapse, or ``None``. ``values``: the per-context tracked
  rewards (the paired drop test); without them the drop is measured in ``scale`` units."""
  if not (math.isfinite(reward) and math.isfinite(loss)):
    return f"non-finite reward/loss ({reward}, {loss})"
  if nonfinite > cfg.max_nonfinite:
    return f"{nonfinite:.0%} of the updates were non-finite (skipped)"
  if len(s.losses) >= 2:
    med = float(np.median(s.losses))
    if abs(loss) > cfg.spike_factor * max(med, 1e-8):
      return f"loss spike: |loss| {abs(loss):.4g} > {cfg.spike_factor} x median {med:.4g}"
  if s.best is None:
    return None
  se = paired_se(values, s.best_values)
  if se is not None:
    margin = max(cfg.drop_tol * se, cfg.drop_min * s.scale)
    if reward < s.best - margin:
      return (f"reward drop: {reward:.4g} < best {s.best:.4g} - max({cfg.drop_tol} x paired "
              f"SE {se:.4g}, {cfg.drop_min} x scale {s.scale:.4g}) (same "
              f"{len(s.best_values)} contexts)")
  elif reward < s.best - cfg.drop_tol * s.scale:
    return (f"reward drop: {reward:.4g} < best {s.best:.4g} - {cfg.drop_tol} x scale "
            f"{s.scale:.4g}")
  return None


def decide(cfg: SchedulerConfig, s: SchedulerState, *, reward: float, loss: float,
           nonfinite: float = 0.0, values=None) -> Tuple[SchedulerState, dict]:
  """One decision after a chunk (see the module doc). Returns ``(state, decision)``; the
  decision dict holds ``action``, ``reason``, ``stage``, ``pass`` and the numbers used.
  ``values``: the tracked reward per held-out context (its mean is ``reward``)."""
  where = {"stage": stage(cfg, s), "pass": s.pass_idx, "chunk": s.chunk + 1,
           "reward": reward, "best_before": s.best, "loss": loss, "nonfinite": nonfinite}
  reason = collapse_reason(cfg, s, reward, loss, nonfinite, values)
  if reason is not None:
    # A rolled-back chunk counts against the visit's budget: at ``max_chunks`` the visit
    # moves on (from its best adapters) instead of running another chunk.
    if s.rollbacks < cfg.max_rollbacks and s.chunk + 1 < cfg.max_chunks:
      new = _decayed(cfg, dataclasses.replace(s, chunk=s.chunk + 1,
                                              rollbacks=s.rollbacks + 1,
                                              total_rollbacks=s.total_rollbacks + 1))
      return new, dict(where, action="rollback", reason=reason,
                       lr_scale=lr_scale(cfg, new))
    new = _advance(cfg, dataclasses.replace(s, total_rollbacks=s.total_rollbacks + 1))
    action = "finish" if new.done else "advance"
    why = (f"{cfg.max_rollbacks} rollbacks already" if s.rollbacks >= cfg.max_rollbacks
           else f"max_chunks={cfg.max_chunks} reached")
    return new, dict(where, action=action, rollback=True,
                     reason=f"{reason}; {why}, moving on from the visit's best adapters")
  # The visit's first good chunk resets the plateau count whatever its reward (it passed the
  # drop test above): the first chunk of a visit spends itself on leaving the start (PPO's
  # first chunk dips a little, within the drop margin, before it climbs), and counting it as
  # "no gain" stopped slow climbers after ``min_chunks`` (Nav1D DD `full` RL: 2 chunks where
  # it had run 6, `argmax` 22.67 -> 20.54).
  first_good = not s.losses
  se = paired_se(values, s.best_values) if s.best is not None else None
  margin = cfg.tol * s.scale if se is None else cfg.gain_se * se
  improved = first_good or s.best is None or reward > s.best + margin
  new_best = s.best is None or reward > s.best
  best = reward if new_best else s.best
  best_values = s.best_values
  if new_best:
    best_values = () if values is None else tuple(float(v) for v in np.asarray(values))
  s = dataclasses.replace(s, chunk=s.chunk + 1, best=best, best_values=best_values,
                          since_best=0 if improved else s.since_best + 1,
                          losses=s.losses + (abs(loss),))
  where["new_best"] = bool(new_best)
  if s.chunk >= cfg.max_chunks:
    reason = f"max_chunks={cfg.max_chunks} reached"
  elif s.chunk >= cfg.min_chunks and s.since_best >= cfg.patience:
    unit = f"{cfg.tol} x scale" if se is None else f"{cfg.gain_se} x paired SE"
    reason = (f"plateau: no gain above {unit} for {s.since_best} chunks "
              f"(best {s.best:.4g})")
  else:
    return s, dict(where, action="continue", reason="improving" if improved else
                   f"{s.since_best} chunk(s) without gain")
  new = _advance(cfg, s)
  return new, dict(where, action="finish" if new.done else "advance", reason=reason)


GUARD_MEASURES = ("return", "success")


def env_guard(before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray],
              tol: float) -> Optional[str]:
  """Why a stage visit must be reverted, or None.

  ``before`` and ``after`` hold per-episode measures (``return``, and ``success`` where the
  environment reports it; ``SELECTION/return`` and ``SELECTION/success`` for further
  selections of the same model) on the *same* episode seeds, before and after the visit. A paired
  one-sided test per measure: the visit is reverted when the mean per-episode change is
  negative and more than ``tol`` standard errors of that change (``std(after - before,
  ddof=1) / sqrt(n)``) below zero, or when an after value is not finite. Pairing removes the
  seed-to-seed spread (the task variation), which on MetaWorld is larger than the effect of
  a visit. ``tol = 0`` turns the guard off.
  """
  if tol <= 0:
    return None
  # ``return``/``success`` of the curve's selection, and ``SELECTION/return`` etc. of every
  # other selection the guard watches (``align.guard_selections``).
  names = [k for k in before if k.rsplit("/", 1)[-1] in GUARD_MEASURES]
  names.sort(key=lambda k: ("/" in k, k))
  for name in names:
    if name not in after:
      continue
    b = np.asarray(before[name], np.float64)
    a = np.asarray(after[name], np.float64)
    if a.shape != b.shape:
      raise ValueError(f"env_guard: {name} before has shape {b.shape}, after {a.shape}; "
                       "both must be per-episode values on the same seeds")
    if not np.all(np.isfinite(a)):
      return f"environment {name} is not finite"
    d = a - b
    n = d.size
    change = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    if change < -tol * se and change < -1e-9 * (1.0 + float(np.abs(b).mean())):
      return (f"environment {name} fell from {b.mean():.4g} to {a.mean():.4g} on the same "
              f"{n} episode seeds (paired change {change:.4g}, standard error {se:.4g}; "
              f"below -{tol:g} SE)")
  return None
