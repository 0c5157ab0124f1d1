"""One (loss, sampler) pair for any of the samplers, so every model can use any of them. PURE.

``ddpm | ddim | sde | ode`` train with the denoising loss on a discrete schedule; ``flow``
trains a velocity model with the flow-matching loss and samples with Euler steps.
"""
import functools
from typing import Callable, NamedTuple, Optional

from dmc_jax.diffusion import ddim, ddpm, flow_matching, losses, schedules, sde

SAMPLERS = ("ddpm", "ddim", "sde", "ode", "flow")
SCHEDULES = {"linear": schedules.make_linear_schedule, "cosine": schedules.make_cosine_schedule,
             "vp": schedules.make_vp_schedule}


class Generator(NamedTuple):
  """``loss(params, key, x_0, cond, mask=, inpaint_mask=, weights=) -> (loss, metrics)`` and
  ``sample(params, key, x_T, cond, inpaint) -> SamplerOutput``."""
  loss: Callable
  sample: Callable
  num_steps: int  # sampling steps (chain length)


def make_generator(denoise_fn: Callable, *, sampler: str, schedule: str = "cosine",
                   train_steps: int = 20, sample_steps: int = 10, pred_type: str = "eps",
                   clip_x0: Optional[float] = 1.0, num_grad_steps: Optional[int] = None,
                   return_chain: bool = False, ddim_eta: float = 0.0) -> Generator:
  """Builds the training loss and the sampler for ``sampler`` (see module doc)."""
  chain_kw = dict(num_grad_steps=num_grad_steps, return_chain=return_chain)
  if sampler == "flow":
    loss = functools.partial(flow_matching.flow_matching_loss, denoise_fn=denoise_fn)
    return Generator(loss, flow_matching.make_flow_sampler(denoise_fn, sample_steps, **chain_kw),
                     sample_steps)
  if sampler not in SAMPLERS:
    raise ValueError(f"unknown sampler {sampler!r}; known: {SAMPLERS}")
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {schedule!r}; known: {tuple(SCHEDULES)}")
  sched = SCHEDULES[schedule](train_steps)
  loss = functools.partial(losses.diffusion_loss, denoise_fn=denoise_fn, sched=sched,
                           pred_type=pred_type)
  kw = dict(pred_type=pred_type, clip_x0=clip_x0, **chain_kw)
  if sampler == "ddpm":
    return Generator(loss, ddpm.make_ddpm_sampler(denoise_fn, sched, **kw), train_steps)
  if sampler == "ddim":
    base = ddim.make_ddim_sampler(denoise_fn, sched, sample_steps, **kw)
    sample = lambda params, key, x_T, cond=None, inpaint=None: base(
        params, key, x_T, cond, inpaint, eta=ddim_eta)
    return Generator(loss, sample, sample_steps)
  n = max(sample_steps, 2) if sampler == "sde" else sample_steps
  make = sde.make_sde_sampler if sampler == "sde" else sde.make_ode_sampler
  return Generator(loss, make(denoise_fn, sched, n, **kw), n)
