from _loop import t_loop
import time, jax, jax.numpy as jnp, numpy as np
r = np.random.default_rng(0)
N, B, H = 10, 256, 128
x = jnp.asarray(r.standard_normal((N, B, H)), jnp.float32)
dy = jnp.asarray(r.standard_normal((N, B, H)), jnp.float32)
w = jnp.asarray(r.standard_normal((N, H, H)), jnp.float32)
print("dW einsum nbi,nbo", t_loop(lambda x, dy: jnp.einsum("nbi,nbo->nio", x, dy), x, dy))
print("dW swap then nib,nbo", t_loop(lambda x, dy: jnp.einsum("nib,nbo->nio", jnp.swapaxes(x, 1, 2), dy), x, dy))
print("dW 10x 2D", t_loop(lambda x, dy: jnp.stack([x[i].T @ dy[i] for i in range(N)]), x, dy))
print("dX einsum nbo,nio->nbi", t_loop(lambda dy, w: jnp.einsum("nbo,nio->nbi", dy, w), dy, w))
print("dX swap w", t_loop(lambda dy, w: jnp.einsum("nbo,noi->nbi", dy, jnp.swapaxes(w, 1, 2)), dy, w))
print("fwd nbi,nio", t_loop(lambda x, w: jnp.einsum("nbi,nio->nbo", x, w), x, w))
print("fwd 10x 2D", t_loop(lambda x, w: jnp.stack([x[i] @ w[i] for i in range(N)]), x, w))
