"""The three DMCs: in-painting is exact for every sampler, masks and conditions are honoured."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from dmc_jax import networks
from dmc_jax.data.episodes import Normalizer, Segment
from dmc_jax.models import dmc as dmc_lib
from dmc_jax.models import generator as gen_lib
from dmc_jax.models import policy as policy_lib

OBS, ACT, H = 4, 1, 8


def build(kind, sampler, backbone="mlp"):
  if kind == "diffusion_policy":
    module = (networks.DiT1D(d_model=16, num_heads=2, depth=1) if backbone == "dit" else
              networks.MLPDenoiser(hidden_dim=16, num_blocks=1, block_width=32, time_dim=8,
                                   cond_dim=8))
  else:
    module = networks.TemporalUnet(dim=8, dim_mults=(1, 2))
  fn = networks.make_denoise_fn(module)
  gen = gen_lib.make_generator(fn, sampler=sampler, train_steps=6, sample_steps=3)
  if kind == "diffuser":
    return dmc_lib.make_diffuser(fn, module, gen, obs_dim=OBS, act_dim=ACT, horizon=H,
                                 max_known=3, action_weight=10.0)
  if kind == "decision_diffuser":
    return dmc_lib.make_decision_diffuser(fn, module, gen, obs_dim=OBS, act_dim=ACT, horizon=H,
                                          inverse_hidden=(16,), max_known=3, execute_steps=2)
  return dmc_lib.make_diffusion_policy(fn, module, gen, obs_dim=OBS, act_dim=ACT, chunk=4,
                                       history=2, execute_steps=2)


def segment(key, b=6):
  k1, k2, k3 = jax.random.split(key, 3)
  obs = jax.random.normal(k1, (b, H, OBS))
  return Segment(history=jax.random.normal(k3, (b, 2, OBS)).at[:, -1].set(obs[:, 0]), obs=obs,
                 actions=jax.random.uniform(k2, (b, H, ACT), minval=-1, maxval=1),
                 mask=jnp.arange(H)[None] < jnp.array([8, 8, 5, 3, 8, 1])[:, None])


class PlannerTest(parameterized.TestCase):

  @parameterized.product(kind=["diffuser", "decision_diffuser"],
                         sampler=list(gen_lib.SAMPLERS))
  def test_inpainted_state_equals_observed_state_in_every_plan(self, kind, sampler):
    model = build(kind, sampler)
    params = model.init(jax.random.key(0))
    hist = jax.random.normal(jax.random.key(1), (3, 1, OBS))
    prop = jax.jit(model.propose, static_argnums=3)(params, jax.random.key(2), hist, 5)
    chex.assert_shape(prop.plan_obs, (3, 5, H, OBS))
    chex.assert_shape(prop.plan_actions, (3, 5, H - 1, ACT))
    chex.assert_shape(prop.actions, (3, 5, model.execute_steps, ACT))
    np.testing.assert_array_equal(prop.plan_obs[:, :, 0],
                                  jnp.broadcast_to(hist[:, None, -1], (3, 5, OBS)))
    # The rest of the plan is sampled: candidates differ.
    self.assertGreater(float(jnp.std(prop.plan_obs[:, :, 1:], axis=1).mean()), 1e-3)

  def test_causal_known_mask(self):
    m = np.asarray(dmc_lib.causal_known_mask(jax.random.key(0), 500, H, OBS, ACT, 3))
    self.assertFalse(m[..., OBS:].any())                        # actions never imposed
    k = m[..., 0].sum(1)
    self.assertEqual(set(k.tolist()), {1, 2, 3})               # prefix lengths 1..max_known
    np.testing.assert_array_equal(m[..., 0], np.arange(H)[None] < k[:, None])  # a prefix


class LossTest(parameterized.TestCase):

  @parameterized.parameters("diffuser", "decision_diffuser", "diffusion_policy")
  def test_padded_steps_do_not_change_the_loss(self, kind):
    model = build(kind, "ddim")
    params = model.init(jax.random.key(0))
    seg = segment(jax.random.key(1))
    loss = jax.jit(model.loss)
    base, _ = loss(params, jax.random.key(3), seg)
    pad = ~seg.mask[..., None]
    poked = seg._replace(obs=jnp.where(pad, 50.0, seg.obs),
                         actions=jnp.where(pad, -50.0, seg.actions))
    np.testing.assert_allclose(loss(params, jax.random.key(3), poked)[0], base, rtol=1e-5)
    changed = seg._replace(actions=seg.actions.at[0, 0].add(3.0))
    self.assertNotAlmostEqual(float(loss(params, jax.random.key(3), changed)[0]), float(base),
                              places=4)
    grads = jax.grad(lambda p: loss(p, jax.random.key(3), seg)[0])(params)
    self.assertGreater(float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(grads))), 0)

  @parameterized.parameters("mlp", "dit")
  def test_policy_uses_its_observation_history(self, backbone):
    model = build("diffusion_policy", "ddim", backbone)
    params = model.init(jax.random.key(0))
    if backbone == "dit":  # adaLN-Zero starts at exactly 0 output: perturb to make it live
      params = jax.jit(lambda ps: jax.tree.map(  # one compile, not one per leaf shape
          lambda p: p + 0.1 * jax.random.normal(jax.random.key(5), p.shape), ps))(params)
    hist = jax.random.normal(jax.random.key(1), (2, 2, OBS))
    propose = jax.jit(model.propose, static_argnums=3)
    a = propose(params, jax.random.key(2), hist, 3).actions
    b = propose(params, jax.random.key(2), hist.at[:, 0].add(1.0), 3).actions
    self.assertEqual(a.shape, (2, 3, 2, ACT))
    self.assertGreater(float(jnp.max(jnp.abs(a - b))), 1e-4)


class PolicyTest(absltest.TestCase):

  def test_selection_picks_the_best_candidate_in_env_units(self):
    model = build("diffuser", "ddim")
    params = model.init(jax.random.key(0))
    obs_norm = Normalizer(jnp.full(OBS, 0.5), jnp.full(OBS, 2.0))
    act_norm = Normalizer(jnp.full(ACT, 0.1), jnp.full(ACT, 3.0))
    q_fn = lambda p, o, a: jnp.stack([a[:, 0], a[:, 0] + 1.0])   # Q = normalised action
    v_fn = lambda p, o: jnp.zeros(o.shape[0])
    hist = jax.random.normal(jax.random.key(1), (4, 1, OBS))
    kw = dict(obs_norm=obs_norm, act_norm=act_norm, num_candidates=6, q_fn=q_fn, v_fn=v_fn)
    act = policy_lib.make_policy(model, selection="argmax", **kw)
    actions, info = act(params, (None, None), jax.random.key(2), hist)
    k_prop, _ = jax.random.split(jax.random.key(2))
    prop = model.propose(params, k_prop, obs_norm.normalize(hist), 6)
    best = jnp.max(prop.actions[:, :, 0, 0], 1)
    np.testing.assert_allclose(actions[:, 0, 0], best * 3.0 + 0.1, rtol=1e-5)
    np.testing.assert_allclose(info["plan_obs"][:, 0], hist[:, 0], rtol=1e-5, atol=1e-6)
    mean_act, _ = policy_lib.make_policy(model, selection="expectation", **kw)(
        params, None, jax.random.key(2), hist)
    np.testing.assert_allclose(mean_act[:, 0, 0],
                               jnp.mean(prop.actions[:, :, 0, 0], 1) * 3.0 + 0.1, rtol=1e-5)
    with self.assertRaisesRegex(ValueError, "needs a critic"):
      policy_lib.make_policy(model, selection="argmax", obs_norm=obs_norm, act_norm=act_norm,
                             num_candidates=2)


if __name__ == "__main__":
  absltest.main()
