"""Named PRNG streams of the job (SHELL helper): every key of a run derives from
``config.seed`` through these names, so a resumed phase redraws the same keys.

The values are the ones the job has always used (changing one changes every number a run
produces); they are named here instead of appearing as offsets at the call sites.
"""
from typing import NamedTuple

import jax

# fold_in offsets of the job's streams
ALIGN = 0x616C69  # the alignment's base key, from the job key ("ali")
CASCADE = 7  # the cascade's key, from the alignment key
CASCADE_CONTEXTS = 10_000_000  # the cascade's contexts: the alignment's stream from here on
ONLINE_CRITIC = 1 << 30  # the online critic updates, from the online stream
DYNAMICS = 0x64796E  # the learned dynamics model's fit, from the alignment key ("dyn")
# fold_in indices of the evaluation stream
EVAL_FINAL = 0  # the final evaluation (and the reference of results.json)
EVAL_RANDOM = 1  # the random-policy baseline
EVAL_ALIGN = 2  # the before/after rows of the alignment
CURVE_SEEDS = 0  # the alignment curve's fixed episode seeds, from the curve stream
TRACK_NOISE = 1  # the tracked reward's fixed noise, from the track stream


class JobKeys(NamedTuple):
  critic: jax.Array  # IQL init and batches
  init: jax.Array  # DMC initialisation
  train: jax.Array  # DMC batches and losses (fold_in(train, step))
  eval: jax.Array  # evaluation episode seeds (fold_in(eval, EVAL_* or curve step))
  align: jax.Array  # base key of the alignment phase


class AlignKeys(NamedTuple):
  init: jax.Array  # adapters
  update: jax.Array  # per-update keys (fold_in(update, u))
  contexts: jax.Array  # per-update contexts (fold_in(contexts, u))
  track: jax.Array  # held-out contexts of the tracked reward
  curve: jax.Array  # episode seeds of the alignment curve and the environment guard
  online: jax.Array  # online roll-outs (fold_in(online, step)) and critic updates


def job_keys(seed: int) -> JobKeys:
  key = jax.random.key(seed)
  critic, init, train, eval_ = jax.random.split(key, 4)
  return JobKeys(critic, init, train, eval_, jax.random.fold_in(key, ALIGN))


def align_keys(key) -> AlignKeys:
  return AlignKeys(*jax.random.split(key, 6))


def eval_key(keys: JobKeys, index: int):
  return jax.random.fold_in(keys.eval, index)
