"""``Dense`` over the last axis of an input of any rank, computed as one 2-D matmul.

A drop-in for ``flax.linen.Dense`` (same class name, so the same parameter names and shapes:
checkpoints are interchangeable). XLA:CPU's backward of a ``dot_general`` on a 3-D input
(``[B, L, D] x [D, F]``) is slow: on the benchmark DiT (tokens ``[256, 8, 320]``) the
gradient took 231 ms with ``nn.Dense`` and 168 ms with the leading axes flattened first
(BUILD_NOTES.md, issue #15). The values are the same matmul.
"""
import flax.linen as nn


class Dense(nn.Dense):

  def __call__(self, inputs):
    if inputs.ndim <= 2:
      return super().__call__(inputs)
    lead = inputs.shape[:-1]
    y = super().__call__(inputs.reshape(-1, inputs.shape[-1]))
    return y.reshape(lead + (self.features,))
