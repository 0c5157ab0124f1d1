import sys, time
import jax, jax.numpy as jnp, optax
from configs import nav1d as nav1d_config
from dmc_jax.aligners import base, rl
from dmc_jax.train import builders
c = nav1d_config.get_config("dd,full")
dmc = builders.make_dmc(c, 1, 1)
params = jax.jit(dmc.init)(jax.random.key(0))
cr = builders.make_critic(c)
qp = jax.jit(cr.q_module.init)(jax.random.key(1), jnp.zeros((1, 1)), jnp.zeros((1, 1)))["params"]
vp = jax.jit(cr.v_module.init)(jax.random.key(2), jnp.zeros((1, 1)))["params"]
reward = base.make_q_reward(dmc.sampling, cr.q_fn)
hist = jax.random.uniform(jax.random.key(3), (32, dmc.history, 1), minval=-1, maxval=1)
r = c.align.rl
al = rl.make_policy_gradient_aligner(dmc.sampling, reward, optax.adam(3e-3), method="ppo",
    num_samples=r.num_samples, epochs=r.epochs, step_groups=r.step_groups, clip_eps=r.clip_eps,
    kl_coef=r.kl_coef, entropy_coef=r.entropy_coef)
st = al.init(jax.random.key(4), params)
upd = jax.jit(al.update)
t0 = time.time(); out = upd(st, params, (qp, vp), {"hist": hist}, jax.random.key(7)); jax.block_until_ready(out); tc = time.time() - t0
ts = []
for i in range(3):
  t0 = time.time(); jax.block_until_ready(upd(st, params, (qp, vp), {"hist": hist}, jax.random.key(7))); ts.append(time.time() - t0)
print(f"DD PPO update (Nav1D defaults, 32 contexts x 8 samples): compile+first {tc:.1f} s, median {sorted(ts)[1]:.2f} s, loss {float(out[1]['loss']):.6f}")
