"""One process of the multi-process pretraining test (``test_multihost``): ``python
multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz [LOCAL_DEVICES]``.

With ``NUM_PROCESSES > 1`` it joins ``jax.distributed`` on ``127.0.0.1:PORT`` (CPU
collectives over gloo), so the job mesh spans every process's devices; it then runs a critic
chunk and a DMC chunk on that mesh (:func:`dmc_jax.train.pretrain.make_critic_chunk`,
:func:`~dmc_jax.train.pretrain.make_dmc_chunk`) and writes its copy of the replicated
parameters to ``OUT.npz``.
"""
import sys

import jax


def main(pid: int, n: int, port: int, out: str, local_devices: int = 2):
  jax.config.update("jax_num_cpu_devices", local_devices)
  if n > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=n,
                               process_id=pid)
  import numpy as np
  import optax
  from flax import traverse_util

  from configs import nav1d as nav1d_config
  from dmc_jax.data import episodes as ep_lib
  from dmc_jax.train import builders, pretrain, sharding
  from dmc_jax.train import step as step_lib

  cfg = nav1d_config.get_config("dp,full,smoke")
  rng = np.random.default_rng(0)
  m = 512
  trans = ep_lib.Transitions(
      rng.normal(size=(m, 1)).astype(np.float32), rng.uniform(-1, 1, (m, 1)).astype(np.float32),
      rng.normal(size=(m,)).astype(np.float32), rng.normal(size=(m, 1)).astype(np.float32),
      np.zeros((m,), np.float32))
  eps = ep_lib.Episodes(rng.normal(size=(8, 33, 1)).astype(np.float32),
                        rng.uniform(-1, 1, (8, 32, 1)).astype(np.float32),
                        np.zeros((8, 32), np.float32), np.zeros((8, 32), bool),
                        np.full((8,), 32, np.int32))
  mesh = sharding.job_mesh("mesh")
  assert sharding.mesh_size(mesh) == n * local_devices, (jax.device_count(), n)

  critic = builders.make_critic(cfg)
  run = pretrain.make_critic_chunk(critic, jax.random.key(1), 64, mesh)
  init_q = jax.device_get(critic.init(jax.random.key(0), 1, 1).q.params)
  state, _ = run(critic.init(jax.random.key(0), 1, 1), 0, 20, trans)

  dmc = builders.make_dmc(cfg, 1, 1)
  norm_o = ep_lib.fit_normalizer(eps.observations.reshape(-1, 1))
  norm_a = ep_lib.fit_normalizer(eps.actions.reshape(-1, 1))
  seg = ep_lib.make_segment_data(eps, dmc.horizon, norm_o, norm_a)
  step_fn = step_lib.make_train_step(dmc.loss, cfg.train.ema_decay)
  run = pretrain.make_dmc_chunk(dmc, step_fn, jax.random.key(2), 32, mesh)
  ts = step_lib.create_train_state(dmc.init(jax.random.key(0)), optax.adam(1e-3))
  ts, _ = run(ts, 0, 10, sharding.replicate(seg, mesh))

  # Replicated parameters: every process holds the whole value on its own devices.
  local = lambda x: np.asarray(x.addressable_data(0)) if hasattr(x, "addressable_data") \
      else np.asarray(x)
  flat = {}
  for name, tree in (("q", state.q.params), ("v", state.v.params), ("dmc", ts.params)):
    for k, v in traverse_util.flatten_dict(jax.device_get(jax.tree.map(local, tree)),
                                           sep="/").items():
      flat[f"{name}/{k}"] = v
  # How far training moved the Q heads (so the test does not compare two initialisations).
  moved = max(float(np.max(np.abs(flat[f"q/{k}"] - v)))
              for k, v in traverse_util.flatten_dict(init_q, sep="/").items())
  np.savez(out, moved=np.float32(moved), **flat)
  if n > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  args = sys.argv[1:]
  main(int(args[0]), int(args[1]), int(args[2]), args[3], *(int(a) for a in args[4:]))
