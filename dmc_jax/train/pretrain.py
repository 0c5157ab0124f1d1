"""Pretraining (SHELL): the dataset, the IQL critic and the DMC, each a resumable phase.

``prepare_data`` loads and normalises the dataset (and resolves the config's data-dependent
settings); ``train_critic`` and ``pretrain_dmc`` run their phases from the latest checkpoint
(:func:`dmc_jax.train.phases.run_phase`). Called by the job (:mod:`dmc_jax.train.offline`).
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dmc_jax.data import episodes as ep_lib
from dmc_jax.data import gym_data, minari_io, nav1d_data
from dmc_jax.envs import nav1d
from dmc_jax.envs import registry
from dmc_jax.train import checkpoint
from dmc_jax.train import distributed
from dmc_jax.train import hooks as hooks_lib
from dmc_jax.train import phases
from dmc_jax.train import sharding
from dmc_jax.train import step as step_lib
from dmc_jax.train import validation


class Data(NamedTuple):
  """The dataset as the phases use it."""
  episodes: ep_lib.Episodes
  trans_n: ep_lib.Transitions  # normalised transitions, rewards times data.reward_scale
  obs_norm: ep_lib.Normalizer
  act_norm: ep_lib.Normalizer
  env_info: dict  # dataset_id; for gymnasium data env_spec and ref_scores


# ---------------------------------------------------------------------------------- data
def _ensure(make):
  """``make()`` (generate a missing dataset) on process 0 first, then on the others: with a
  shared ``MINARI_DATASETS_PATH`` they find it made; with one per host each makes the same
  (deterministic) copy."""
  if jax.process_index() == 0:
    out = make()
  distributed.barrier("dmc_jax_dataset")
  if jax.process_index() != 0:
    out = make()
  return out


def load_data(config):
  """Returns ``(episodes, env_info)``; Nav1D datasets are generated when missing."""
  if config.task == "nav1d":
    did = _ensure(lambda: nav1d_data.ensure_dataset(
        config.data.dataset, task_seed=config.env.task_seed, horizon=config.env.horizon,
        step_size=config.env.step_size, num_episodes=config.data.num_episodes,
        seed=config.data.collect_seed))
    eps, _ = minari_io.load_episodes(did, (nav1d.OBS_DIM,), (nav1d.ACT_DIM,))
    return eps, {"dataset_id": did}
  registry.register_all()  # the dataset's env spec names a library id
  _ensure(lambda: gym_data.ensure_dataset(config.data.dataset,
                                          num_episodes=config.data.num_episodes,
                                          seed=config.data.collect_seed))
  ds = minari_io.open_dataset(config.data.dataset)
  env = ds.recover_environment()
  eps, _ = minari_io.load_episodes(config.data.dataset, env.observation_space.shape,
                                   env.action_space.shape)
  meta = ds.storage.metadata
  ref = (meta.get("ref_min_score"), meta.get("ref_max_score"))
  return eps, {"dataset_id": config.data.dataset, "env_spec": env.spec,
               "ref_scores": None if None in ref else tuple(float(x) for x in ref)}


def prepare_data(config):
  """Loads the dataset and fits the normalisers; returns ``(config, Data)`` with
  ``diffusion.clip_x0 = -1`` resolved to the normalised data's range (deterministic, so a
  resumed run resolves the same) and a clip that cuts the data refused."""
  eps, env_info = load_data(config)
  trans = ep_lib.to_transitions(eps)
  obs_norm = ep_lib.fit_normalizer(trans.obs, config.data.normalizer)
  act_norm = ep_lib.fit_normalizer(trans.actions, config.data.normalizer)
  trans_n = jax.tree.map(jnp.asarray, trans._replace(obs=obs_norm.normalize(trans.obs),
                                                     next_obs=obs_norm.normalize(trans.next_obs),
                                                     actions=act_norm.normalize(trans.actions),
                                                     rewards=trans.rewards *
                                                     np.float32(config.data.reward_scale)))
  config = validation.resolve_clip(config, trans_n)
  validation.check_clip(config, trans_n)
  print(f"data {env_info['dataset_id']}: {len(eps.lengths)} episodes, {len(trans.obs)} "
        f"transitions, mean return {eps.returns().mean():.2f}", flush=True)
  return config, Data(eps, trans_n, obs_norm, act_norm, env_info)


# -------------------------------------------------------------------------------- critic
def make_critic_chunk(critic, k_train, batch_size: int, mesh=None):
  """``run(state, start, n, data) -> (state, metrics [n])``: IQL updates ``start ..
  start + n - 1`` as one compiled scan (update ``i`` draws its batch from
  ``fold_in(k_train, i)``, so chunking does not change the numbers). With a ``mesh``
  (:func:`sharding.job_mesh`) each batch is split over its devices and the state and data
  are replicated: the same batches, the gradients all-reduced (equal to one device within
  float32 round-off)."""
  @functools.partial(jax.jit, static_argnums=2, donate_argnums=0)
  def run(state, start, n, data):
    def body(s, i):
      batch = ep_lib.sample_transitions(jax.random.fold_in(k_train, i), data, batch_size)
      return critic.update(s, sharding.shard_batch(batch, mesh))
    return jax.lax.scan(body, state, start + jnp.arange(n))

  return _on_mesh(run, mesh)


def train_critic(config, critic, trans_n, key, writer, workdir, hooks=hooks_lib.NONE):
  """IQL on normalised transitions (``critic``: :func:`builders.make_critic`); returns the
  final :class:`~dmc_jax.critics.iql.IQLState`."""
  cc = config.critic
  k_init, k_train = jax.random.split(key)
  state = critic.init(k_init, trans_n.obs.shape[-1], trans_n.actions.shape[-1])
  mesh = sharding.job_mesh(config.train.parallel)
  run = make_critic_chunk(critic, k_train, cc.batch_size, mesh)
  data = sharding.replicate(trans_n, mesh)  # once, not per chunk

  def log(step, m, progress):
    writer.write_scalars(step, {f"critic/{k}": v for k, v in m.items()})
    progress.update(step, f"q_loss {m['q_loss']:.4f} v_loss {m['v_loss']:.4f}")

  state = phases.run_phase("critic", workdir, config, state, total=cc.steps,
                           chunk=config.train.log_every,
                           run_chunk=lambda st, start, n: run(st, start, n, data),
                           writer=writer, log_fn=log, hooks=hooks)
  return _leave_mesh(state, mesh)


def _on_mesh(run, mesh):
  """``run(state, start, n, data)`` with state and data replicated over ``mesh`` before each
  call (one placement: the chunk compiles once); ``run`` itself without a mesh."""
  if mesh is None:
    return run
  return lambda state, start, n, data: run(sharding.replicate(state, mesh), start, n,
                                           sharding.replicate(data, mesh))


def _leave_mesh(tree, mesh):
  """The phase's result as a single-device program would have left it (on the first local
  device): alignment, evaluation and online fine-tuning place their own arguments."""
  return tree if mesh is None else sharding.on_first_device(tree)


# ----------------------------------------------------------------------------------- DMC
def make_dmc_chunk(dmc, step_fn, k_train, batch_size: int, mesh=None):
  """``run(state, start, n, seg) -> (state, metrics [n])``: DMC train steps ``start ..
  start + n - 1`` as one compiled scan (step ``i`` draws its segments and loss noise from
  ``fold_in(k_train, i)``). With a ``mesh`` the segments of each step are split over its
  devices, state and data replicated (as :func:`make_critic_chunk`)."""
  @functools.partial(jax.jit, static_argnums=2, donate_argnums=0)
  def run(state, start, n, seg):
    def body(s, i):
      k_data, k_loss = jax.random.split(jax.random.fold_in(k_train, i))
      batch = ep_lib.sample_segments(k_data, seg, batch_size, dmc.horizon, dmc.history)
      return step_fn(s, k_loss, sharding.shard_batch(batch, mesh))
    return jax.lax.scan(body, state, start + jnp.arange(n))

  return _on_mesh(run, mesh)


def pretrain_dmc(config, dmc, data: Data, seg_data, *, critic_params, evaluate, keys, writer,
                 workdir, hooks=hooks_lib.NONE):
  """Trains the DMC (EMA params evaluated every ``train.eval_every`` steps on
  ``eval.curve_episodes`` seeds); returns ``(train_state, curve)`` with the curve points
  ``(step, return mean, return std)`` read back from ``metrics.jsonl`` (a resumed run has
  them all)."""
  tc = config.train
  state = step_lib.create_train_state(dmc.init(keys.init), optax.adam(tc.lr))
  step_fn = step_lib.make_train_step(dmc.loss, tc.ema_decay)

  mesh = sharding.job_mesh(tc.parallel)
  seg_data = sharding.replicate(seg_data, mesh)  # once, not per chunk
  run = make_dmc_chunk(dmc, step_fn, keys.train, tc.batch_size, mesh)

  eval_points = set(range(tc.eval_every, tc.steps + 1, tc.eval_every)) if tc.eval_every else set()
  chunk = tc.log_every if not tc.eval_every else int(np.gcd(tc.log_every, tc.eval_every))

  def log(step, m, progress):
    writer.write_scalars(step, {f"train/{k}": v for k, v in m.items()})
    if step % tc.log_every == 0 or step == tc.steps:
      progress.update(step, f"loss {m['loss']:.4f}")

  def curve_point(phase_state, step):
    if step in eval_points and step != tc.steps:
      em, _ = evaluate(phase_state["train_state"].ema_params, critic_params,
                       jax.random.fold_in(keys.eval, step), config.eval.curve_episodes)
      writer.write_scalars(step, {f"curve/{k}": v for k, v in em.items()})
      print(f"eval @ {step}: return {em['return_mean']:.2f} ± {em['return_std']:.2f}",
            flush=True)

  # The normalisers travel with the state: a resumed run on other data is a clear error.
  phase_state = {"train_state": state, "obs_norm": data.obs_norm._asdict(),
                 "act_norm": data.act_norm._asdict()}

  def run_dmc(ps, start, n):
    ts, m = run(ps["train_state"], start, n, seg_data)
    return dict(ps, train_state=ts), m

  phase_state = phases.run_phase("dmc", workdir, config, phase_state, total=tc.steps,
                                 chunk=chunk, run_chunk=run_dmc, writer=writer, log_fn=log,
                                 after_chunk=curve_point, hooks=hooks)
  for k, norm in (("obs_norm", data.obs_norm), ("act_norm", data.act_norm)):
    saved, now = phase_state[k], norm._asdict()
    if not all(np.array_equal(saved[f], now[f]) for f in now):
      raise checkpoint.CheckpointMismatchError(
          f"the checkpoint's {k} differs from the one fitted on "
          f"{data.env_info['dataset_id']}: the dataset changed since the checkpoint was made; "
          "use another --workdir")
  writer.rewind(lambda r: phases.row_phase(r) < 3)
  curve = [(r["step"], r["curve/return_mean"], r["curve/return_std"]) for r in writer.rows()
           if "curve/return_mean" in r]
  return _leave_mesh(phase_state["train_state"], mesh), curve
