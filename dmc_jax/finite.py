"""Non-finite guards for compiled updates. PURE."""
import jax
import jax.numpy as jnp


def all_finite(*trees) -> jax.Array:
  """Scalar bool: every floating leaf of every tree is finite."""
  leaves = [x for t in trees for x in jax.tree.leaves(t)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  if not leaves:
    return jnp.array(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def keep_if_finite(ok, new, old):
  """``new`` where ``ok`` else ``old``, leaf by leaf (a skipped update)."""
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
