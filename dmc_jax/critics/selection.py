"""Action selection over ``N`` sampled candidates. PURE.

* ``expectation``: the mean of the candidates.
* IDQL (Hansen-Estruch et al., 2023): ``argmax`` Q; ``softmax``: sample with probability
  ``softmax(temperature * (Q - V))``; ``expectile``: sample with weights
  ``|tau - 1(Q - V < 0)|``.
"""
import jax
import jax.numpy as jnp

SELECTIONS = ("expectation", "argmax", "softmax", "expectile", "first")
Q_AGGS = ("min", "lcb")


def aggregate_heads(qs, agg: str = "min", lcb_coef: float = 1.0):
  """Q heads ``[N, ...]`` -> one value ``[...]``: ``min`` (clipped double Q) or ``lcb``, the
  lower confidence bound ``mean - lcb_coef * std`` over the heads (population std). With two
  heads ``lcb`` at ``lcb_coef = 1`` equals ``min`` (``mean - |q1 - q2| / 2``)."""
  if agg == "min":
    return jnp.min(qs, 0)
  if agg == "lcb":
    return jnp.mean(qs, 0) - lcb_coef * jnp.std(qs, 0)
  raise ValueError(f"unknown Q aggregation {agg!r}; known: {Q_AGGS}")


HEAD_USES = ("reward", "select")


def head_q_fn(q_fn, num_heads: int, split: bool, use: str):
  """``q_fn`` (heads ``[N, ...]``) restricted to the heads ``use`` combines: ``"reward"`` (the
  alignment rewards) or ``"select"`` (the deployed selection). ``split``: the reward takes
  heads ``[0, N/2)`` and selection ``[N/2, N)``, so the controller does not rank candidates
  with the heads the aligner pushed them against (the decoupling of double Q-learning);
  otherwise both take every head."""
  if use not in HEAD_USES:
    raise ValueError(f"unknown head use {use!r}; known: {HEAD_USES}")
  if not split:
    return q_fn
  if num_heads < 4:
    raise ValueError(f"split heads need num_q >= 4 (two per half), got {num_heads}")
  half = num_heads // 2
  part = slice(0, half) if use == "reward" else slice(half, None)
  return lambda *args: q_fn(*args)[part]


def selection_logits(q, v, mode: str, temperature: float = 1.0, expectile: float = 0.7):
  """Log-weights ``[B, N]`` of the candidates for the sampling modes."""
  adv = q - v[:, None]
  if mode == "softmax":
    return temperature * adv
  if mode == "expectile":
    return jnp.log(jnp.where(adv < 0, 1.0 - expectile, expectile))
  raise ValueError(f"no selection weights for mode {mode!r}")


def select_index(key, q, v, mode: str, temperature: float = 1.0, expectile: float = 0.7):
  """Index ``[B]`` of the chosen candidate among ``q [B, N]`` (``v [B]`` for sampling modes)."""
  if mode == "argmax":
    return jnp.argmax(q, axis=-1)
  if mode == "first":
    return jnp.zeros(q.shape[:1], jnp.int32)
  if mode in ("softmax", "expectile"):
    return jax.random.categorical(key, selection_logits(q, v, mode, temperature, expectile))
  raise ValueError(f"unknown selection {mode!r}; known: {SELECTIONS}")


def gather(tree, index):
  """Picks candidate ``index [B]`` from every ``[B, N, ...]`` leaf -> ``[B, ...]``."""
  return jax.tree.map(lambda x: jnp.take_along_axis(
      x, index.reshape((-1,) + (1,) * (x.ndim - 1)), axis=1)[:, 0], tree)


def expectation(candidates):
  """Mean over the candidate axis: ``[B, N, ...] -> [B, ...]``."""
  return jax.tree.map(lambda x: jnp.mean(x, axis=1), candidates)
