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
ALIGN_SEED = 0x736564  # ``align.seed``'s redraw of the optimisation streams ("sed")
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


def redraw_key(key, seed: int):
  """``key`` for alignment seed ``seed``: itself for 0, else an independent key."""
  return jax.random.fold_in(jax.random.fold_in(key, ALIGN_SEED), seed) if seed else key


def align_keys(key, seed: int = 0) -> AlignKeys:
  """The alignment's streams. ``seed`` (``align.seed``) redraws the optimisation's own
  randomness (adapter init, update keys and contexts, online roll-outs) on the same
  pretrained model; the tracked reward's contexts and the curve's episode seeds stay fixed,
  so runs with different alignment seeds are measured on the same contexts and episodes.
  ``seed = 0`` gives the keys every earlier run used."""
  k = AlignKeys(*jax.random.split(key, 6))
  return k._replace(init=redraw_key(k.init, seed), update=redraw_key(k.update, seed),
                    contexts=redraw_key(k.contexts, seed), online=redraw_key(k.online, seed))


def eval_key(keys: JobKeys, index: int):
  return jax.random.fold_in(keys.eval, index)
