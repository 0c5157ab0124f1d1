"""A short real training run: the MLP denoiser learns a 2-D Gaussian mixture."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from dmc_jax import networks
from dmc_jax.diffusion import ddim, losses, schedules
from dmc_jax.train import step as step_lib

MODES = jnp.array([[1.5, 1.5], [-1.5, 1.5], [1.5, -1.5], [-1.5, -1.5]])


def sample_mixture(key, n):
  k_c, k_n = jax.random.split(key)
  return MODES[jax.random.randint(k_c, (n,), 0, 4)] + 0.1 * jax.random.normal(k_n, (n, 2))


class MixtureTest(absltest.TestCase):

  def test_loss_drops_and_samples_land_on_modes(self):
    net = networks.MLPDenoiser(hidden_dim=64, num_blocks=2, block_width=128, time_dim=16)
    fn = networks.make_denoise_fn(net)
    sched = schedules.make_cosine_schedule(20)
    params = net.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    state = step_lib.create_train_state(params, optax.adam(2e-3))
    loss_fn = lambda p, k, x0: losses.diffusion_loss(p, k, x0, denoise_fn=fn, sched=sched)
    train_step = step_lib.make_train_step(loss_fn, ema_decay=0.99)

    @jax.jit
    def train(state, key):
      def body(s, i):
        k_data, k_loss = jax.random.split(jax.random.fold_in(key, i))
        return train_step(s, k_loss, sample_mixture(k_data, 256))
      return jax.lax.scan(body, state, jnp.arange(1500))

    state, metrics = train(state, jax.random.key(1))
    first, last = float(metrics["loss"][:50].mean()), float(metrics["loss"][-50:].mean())
    self.assertLess(last, 0.6 * first)
    sample = jax.jit(ddim.make_ddim_sampler(fn, sched, 20))
    x = sample(state.ema_params, jax.random.key(2), jax.random.normal(jax.random.key(3), (1000, 2)))
    d = jnp.min(jnp.linalg.norm(x.x_0[:, None] - MODES[None], axis=-1), axis=1)
    self.assertGreater(float((d < 0.4).mean()), 0.8)
    # every mode gets a share of the samples (no mode collapse)
    nearest = jnp.argmin(jnp.linalg.norm(x.x_0[:, None] - MODES[None], axis=-1), axis=1)
    counts = np.bincount(np.asarray(nearest), minlength=4)
    self.assertTrue(np.all(counts > 150), counts)


if __name__ == "__main__":
  absltest.main()
