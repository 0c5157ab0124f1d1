"""Shapes, invariants and bad-input errors of the denoisers; LoRA."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

from dmc_jax import networks
from dmc_jax.networks import lora as lora_lib
from dmc_jax.networks.embeddings import CondEmbedding


def _tiny(name):
  if name == "mlp":
    return networks.MLPDenoiser(hidden_dim=16, num_blocks=2, block_width=32, time_dim=8,
                                cond_dim=8), (3, 4, 2)
  if name == "unet":
    return networks.TemporalUnet(dim=8, dim_mults=(1, 2), kernel_size=3, attention=True), (3, 8, 5)
  return networks.DiT1D(d_model=16, num_heads=2, depth=1), (3, 4, 2)


class NetworkTest(parameterized.TestCase):

  @parameterized.parameters("mlp", "unet", "dit")
  def test_shapes_and_condition(self, name):
    net, shape = _tiny(name)
    x = jax.random.normal(jax.random.key(0), shape)
    t = jnp.array([0.1, 0.5, 0.9])
    cond = jax.random.normal(jax.random.key(1), (3, 7))
    params = net.init(jax.random.key(2), x, t, cond)["params"]
    fn = networks.make_denoise_fn(net)
    if name == "dit":  # adaLN-Zero: a fresh DiT outputs exactly 0; give it some weights
      params = jax.tree.map(lambda p: p + 0.05 * jnp.ones_like(p), params)
    y = fn(params, x, t, cond)
    self.assertEqual(y.shape, shape)
    self.assertEqual(y.dtype, jnp.float32)
    # The condition is used ...
    y2 = fn(params, x, t, cond + 1.0)
    self.assertGreater(float(jnp.abs(y - y2).max()), 1e-5)
    # ... and dropping it (cond_mask = 0) makes the output independent of it.
    drop = jnp.zeros((3,))
    np.testing.assert_allclose(fn(params, x, t, cond, drop), fn(params, x, t, cond + 1.0, drop),
                               atol=1e-6)
    # jit and eager agree
    np.testing.assert_allclose(jax.jit(fn)(params, x, t, cond), y, rtol=1e-5, atol=1e-5)

  def test_dit_adaln_zero_starts_at_zero(self):
    net, shape = _tiny("dit")
    x = jax.random.normal(jax.random.key(0), shape)
    params = net.init(jax.random.key(2), x, jnp.ones(3))["params"]
    np.testing.assert_array_equal(net.apply({"params": params}, x, jnp.ones(3)), 0.0)

  def test_unet_horizon_error(self):
    net = networks.TemporalUnet(dim=8, dim_mults=(1, 2, 4, 8))
    with self.assertRaisesRegex(ValueError, r"horizon=12.*multiple of 8"):
      net.init(jax.random.key(0), jnp.zeros((1, 12, 3)), jnp.zeros((1,)))

  def test_unet_is_translation_equivariant_free_of_batch_mixing(self):
    """Each batch row is processed independently (GroupNorm is per sample)."""
    net, shape = _tiny("unet")
    x = jax.random.normal(jax.random.key(0), shape)
    params = net.init(jax.random.key(1), x, jnp.ones(3))["params"]
    full = net.apply({"params": params}, x, jnp.ones(3))
    one = net.apply({"params": params}, x[:1], jnp.ones(1))
    np.testing.assert_allclose(full[:1], one, rtol=1e-5, atol=1e-5)

  def test_cond_embedding_null(self):
    emb = CondEmbedding(4)
    c = jnp.ones((2, 3))
    p = emb.init(jax.random.key(0), c)["params"]
    out = emb.apply({"params": p}, c, jnp.array([1.0, 0.0]))
    np.testing.assert_array_equal(out[1], p["null"])


class LoRATest(parameterized.TestCase):

  @parameterized.parameters("mlp", "unet", "dit")
  def test_fresh_adapter_leaves_output_unchanged(self, name):
    net, shape = _tiny(name)
    x = jax.random.normal(jax.random.key(0), shape)
    t = jnp.full((3,), 0.3)
    base = net.init(jax.random.key(1), x, t)["params"]
    base = jax.tree.map(lambda p: p + 0.05, base)
    filt = lora_lib.all_kernels if name == "unet" else lora_lib.dense_kernels
    ad = lora_lib.init_lora(jax.random.key(2), base, rank=2, filter_fn=filt)
    fn = networks.make_denoise_fn(net)
    lfn = lora_lib.make_lora_denoise_fn(fn, scale=2.0)
    np.testing.assert_array_equal(lfn(lora_lib.LoRAParams(base, ad), x, t, None),
                                  fn(base, x, t, None))

  def test_only_adapters_train_and_merge_exports(self):
    net, shape = _tiny("mlp")
    x = jax.random.normal(jax.random.key(0), shape)
    t = jnp.full((3,), 0.3)
    base = net.init(jax.random.key(1), x, t)["params"]
    ad = lora_lib.init_lora(jax.random.key(2), base, rank=2)
    scale = lora_lib.lora_scale(2, alpha=4.0)
    self.assertEqual(scale, 2.0)
    lfn = lora_lib.make_lora_denoise_fn(networks.make_denoise_fn(net), scale)

    def loss(adapters):
      return jnp.mean((lfn(lora_lib.LoRAParams(base, adapters), x, t, None) - 1.0) ** 2)

    opt = optax.adam(1e-2)
    state = opt.init(ad)

    @jax.jit  # one compile (eager steps would compile every op of the backward pass)
    def step(ad, state):
      upd, state = opt.update(jax.grad(loss)(ad), state, ad)
      return optax.apply_updates(ad, upd), state
    for _ in range(20):
      ad, state = step(ad, state)
    self.assertLess(float(loss(ad)), float(loss(lora_lib.init_lora(jax.random.key(2), base, 2))))
    # Only adapters are optimised; every selected Dense kernel has one, nothing else does.
    flat = jax.tree_util.tree_flatten_with_path(ad)[0]
    self.assertTrue(all(str(p[-1].key) in ("a", "b") for p, _ in flat))
    n_dense = sum(1 for p, l in jax.tree_util.tree_flatten_with_path(base)[0]
                  if p[-1].key == "kernel" and l.ndim == 2)
    self.assertEqual(len(flat), 2 * n_dense)
    # Export: merged weights reproduce the adapted model; the reference is untouched.
    merged = lora_lib.merge_lora(base, ad, scale)
    np.testing.assert_allclose(net.apply({"params": merged}, x, t),
                               lfn(lora_lib.LoRAParams(base, ad), x, t, None), rtol=1e-5, atol=1e-6)
    self.assertGreater(float(jnp.abs(net.apply({"params": merged}, x, t) -
                                     net.apply({"params": base}, x, t)).max()), 1e-3)
    # Hand-check one kernel: W + scale * a @ b.
    path = ("Dense_0", "kernel")
    np.testing.assert_allclose(merged[path[0]][path[1]], base[path[0]][path[1]] + scale *
                               ad[path[0]][path[1]]["a"] @ ad[path[0]][path[1]]["b"], rtol=1e-6)

  def test_bad_rank_and_unknown_path(self):
    with self.assertRaisesRegex(ValueError, "rank must be >= 1"):
      lora_lib.init_lora(jax.random.key(0), {"Dense_0": {"kernel": jnp.ones((2, 2))}}, 0)
    with self.assertRaisesRegex(ValueError, "no matching kernel"):
      lora_lib.merge_lora({"a": {"kernel": jnp.ones((2, 2))}},
                          {"b": {"kernel": {"a": jnp.ones((2, 1)), "b": jnp.ones((1, 2))}}})


if __name__ == "__main__":
  absltest.main()


class ConvTest(parameterized.TestCase):
  """The matmul convolutions against XLA's convolution (second implementation)."""

  @parameterized.parameters((5, 1, 8), (3, 2, 8), (5, 1, 4), (3, 2, 5), (1, 1, 6), (5, 2, 3))
  def test_conv1d_matches_lax(self, k, stride, h):
    """Both paths of Conv1d (XLA's conv at h >= k, im2col below) against XLA's conv, values
    and gradients; the im2col path is also checked on every shape."""
    from dmc_jax.networks.temporal_unet import Conv1d, im2col_conv1d
    x = jax.random.normal(jax.random.key(0), (2, h, 3))
    mod = Conv1d(4, k, stride=stride)
    p = mod.init(jax.random.key(1), x)["params"]
    pad = (k - 1) // 2
    lax_conv = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (stride,), ((pad, k - 1 - pad),), dimension_numbers=("NWC", "WIO", "NWC"))
    ref = lax_conv(x, p["kernel"]) + p["bias"]
    np.testing.assert_allclose(mod.apply({"params": p}, x), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(im2col_conv1d(x, p["kernel"], stride) + p["bias"], ref,
                               rtol=1e-5, atol=1e-5)
    w_out = jax.random.normal(jax.random.key(2), ref.shape)
    g_ref = jax.grad(lambda x, w: jnp.sum(lax_conv(x, w) * w_out), (0, 1))(x, p["kernel"])
    g_mod = jax.grad(lambda x, w: jnp.sum(mod.apply({"params": dict(p, kernel=w)}, x) * w_out),
                     (0, 1))(x, p["kernel"])
    g_col = jax.grad(lambda x, w: jnp.sum(im2col_conv1d(x, w, stride) * w_out), (0, 1))(
        x, p["kernel"])
    for g in (g_mod, g_col):
      for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

  @parameterized.parameters(1, 2)
  def test_conv1d_custom_gradient_in_loops_and_twice(self, stride):
    """``conv1d``'s hand-written kernel gradient against XLA's autodiff of the same conv: in a
    ``lax.scan`` body (where the training loops run it), and differentiated twice."""
    from dmc_jax.networks.temporal_unet import conv1d, xla_conv1d
    x = jax.random.normal(jax.random.key(0), (3, 9, 4))
    w = 0.3 * jax.random.normal(jax.random.key(1), (5, 4, 6))
    loss = lambda f: (lambda w, x: jnp.sum(jnp.tanh(f(x, w, stride)) ** 2))

    def descend(f):
      def body(w, _):
        return w - 0.1 * jax.grad(loss(f))(w, x), jnp.sum(w)
      return jax.lax.scan(body, w, jnp.arange(3))
    (w_a, s_a), (w_b, s_b) = jax.jit(lambda: descend(conv1d))(), jax.jit(
        lambda: descend(xla_conv1d))()
    self.assertGreater(float(jnp.max(jnp.abs(w_a - w))), 1e-3)  # the steps moved the kernel
    np.testing.assert_allclose(w_a, w_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s_a, s_b, rtol=1e-5)
    # grad of a gradient norm: differentiates the custom backward itself
    gg = lambda f: jax.grad(lambda w: jnp.sum(jax.grad(loss(f), (0, 1))(w, x)[1] ** 2))(w)
    np.testing.assert_allclose(gg(conv1d), gg(xla_conv1d), rtol=1e-4, atol=1e-6)

  def test_upsample_matches_transposed_conv(self):
    """PyTorch ConvTranspose1d(k=4, s=2, p=1) == dilate input by 2, pad k-1-p=2, flip kernel."""
    from dmc_jax.networks.temporal_unet import Upsample1d
    x = jax.random.normal(jax.random.key(0), (2, 5, 3))
    mod = Upsample1d(4)
    p = mod.init(jax.random.key(1), x)["params"]
    ref = jax.lax.conv_general_dilated(x, p["kernel"][::-1], (1,), ((2, 2),), lhs_dilation=(2,),
                                       dimension_numbers=("NWC", "WIO", "NWC")) + p["bias"]
    out = mod.apply({"params": p}, x)
    self.assertEqual(out.shape, (2, 10, 4))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


class MishTest(absltest.TestCase):

  def test_mish_matches_its_definition_in_value_and_gradient(self):
    """The one-exp form against ``x tanh(softplus(x))`` (float64 numpy), across the clamp."""
    from dmc_jax.networks.embeddings import mish
    x = np.concatenate([np.linspace(-40.0, 40.0, 4001), [-1e4, -88.0, 19.99, 20.0, 20.01, 1e4]])
    x = x.astype(np.float32)
    x64 = x.astype(np.float64)
    sp = np.logaddexp(0.0, x64)
    ref = x64 * np.tanh(sp)
    sig = 0.5 * (1.0 + np.tanh(0.5 * x64))  # the logistic function, without overflow
    dref = np.tanh(sp) + x64 * (1.0 - np.tanh(sp) ** 2) * sig
    y = np.asarray(jax.jit(mish)(jnp.asarray(x)))
    dy = np.asarray(jax.jit(jax.vmap(jax.grad(mish)))(jnp.asarray(x)))
    np.testing.assert_allclose(y, ref, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(dy, dref, rtol=1e-4, atol=1e-4)
    self.assertTrue(np.all(np.isfinite(dy)))


class DenseTest(absltest.TestCase):

  def test_flattened_dense_is_flax_dense_on_any_rank(self):
    """Same parameter tree as ``nn.Dense`` (so checkpoints carry over), same values and
    gradients on a 3-D and a 2-D input."""
    import flax.linen as nn
    from dmc_jax.networks.dense import Dense
    for shape in ((3, 5, 4), (6, 4)):
      x = jax.random.normal(jax.random.key(0), shape)
      ours, ref = Dense(7), nn.Dense(7)
      p = ours.init(jax.random.key(1), x)
      p_ref = ref.init(jax.random.key(1), x)
      self.assertEqual(jax.tree.structure(p), jax.tree.structure(p_ref))
      np.testing.assert_allclose(ours.apply(p, x), ref.apply(p, x), rtol=1e-6, atol=1e-6)
      w = jax.random.normal(jax.random.key(2), shape[:-1] + (7,))
      g = jax.grad(lambda p: jnp.sum(ours.apply(p, x) * w))(p)
      g_ref = jax.grad(lambda p: jnp.sum(ref.apply(p, x) * w))(p)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g, g_ref)


class GroupNormTest(parameterized.TestCase):

  @parameterized.parameters(((4, 16, 32), 8), ((3, 4, 256), 8), ((2, 5, 3, 12), 4))
  def test_group_norm_is_flax_group_norm(self, shape, groups):
    """Against the definition in float64 numpy (contiguous channel groups, biased variance
    over the middle axes and the group's channels), on data far from zero mean; parameter
    tree, first and second derivatives against ``nn.GroupNorm``."""
    import flax.linen as nn
    from dmc_jax.networks.norm import GroupNorm
    rng = np.random.default_rng(0)
    # per-channel offsets and spreads, so a wrong grouping or a cancellation shows
    x = (rng.standard_normal(shape) * rng.uniform(0.2, 3.0, shape[-1])
         + rng.uniform(-30.0, 30.0, shape[-1])).astype(np.float32)
    ours, ref = GroupNorm(groups), nn.GroupNorm(num_groups=groups)
    p = ours.init(jax.random.key(0), x)
    self.assertEqual(jax.tree.structure(p), jax.tree.structure(ref.init(jax.random.key(0), x)))
    c = shape[-1]
    p = {"params": {"scale": jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32),
                    "bias": jnp.asarray(rng.standard_normal(c), jnp.float32)}}
    xg = x.astype(np.float64).reshape(shape[0], -1, groups, c // groups)
    axes = (1, 3)
    norm = (xg - xg.mean(axes, keepdims=True)) / np.sqrt(xg.var(axes, keepdims=True) + 1e-6)
    want = (norm.reshape(shape) * np.asarray(p["params"]["scale"], np.float64)
            + np.asarray(p["params"]["bias"], np.float64))
    np.testing.assert_allclose(ours.apply(p, x), want, rtol=2e-4, atol=2e-4)
    w = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    loss = lambda mod: lambda p, x: jnp.sum(jnp.sin(mod.apply(p, x)) * w)
    g, g_ref = (jax.grad(loss(m), (0, 1))(p, x) for m in (ours, ref))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3), g, g_ref)
    v = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    hvp = lambda m: jax.jvp(lambda x: jax.grad(loss(m), 1)(p, x), (x,), (v,))[1]
    np.testing.assert_allclose(hvp(ours), hvp(ref), rtol=2e-3, atol=2e-3)

  def test_group_norm_refuses_channels_that_do_not_split(self):
    from dmc_jax.networks.norm import GroupNorm
    with self.assertRaisesRegex(ValueError, "6 channels do not split into 4 groups"):
      GroupNorm(4).init(jax.random.key(0), jnp.ones((2, 3, 6)))
