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
  """The training loss and the sampler of one denoiser.

  Attributes:
    loss: ``(params, key, x_0, cond, mask=, inpaint_mask=, weights=) -> (loss, metrics)``.
    sample: ``(params, key, x_T, cond=None, inpaint=None, **kw) -> SamplerOutput``, a
      :class:`~dmc_jax.diffusion.chain.Sampler` (``sample.replace(...)`` changes its chain
      options; ``sample.step_log_prob`` re-evaluates a recorded step).
    num_steps: sampling steps (chain length).
    errors: ``(params, key, x_0, cond, mask=, inpaint_mask=) -> (errors [B], log_snr [B])``,
      each sample's training error; the same ``key`` gives the same noise (Diffusion-DPO).
    stochastic: the sampler knobs that make every step but the last Gaussian with ``std > 0``
      (for REINFORCE/PPO); ``None`` when the sampler cannot be made stochastic (``ode``).
  """
  loss: Callable
  sample: Callable
  num_steps: int
  errors: Callable
  stochastic: Optional[dict]
  denoise_fn: Optional[Callable] = None  # the network (the cascade builds on it)


def make_generator(denoise_fn: Callable, *, sampler: str, schedule: str = "cosine",
                   train_steps: int = 20, sample_steps: int = 10, pred_type: str = "eps",
                   clip_x0: Optional[float] = 1.0, num_grad_steps: Optional[int] = None,
                   return_chain: bool = False, ddim_eta: float = 0.0,
                   stochastic_scale: float = 1.0) -> Generator:
  """Builds the training loss and the sampler for ``sampler`` (see module doc).

  ``stochastic_scale`` is the DDIM ``eta`` / flow ``noise_scale`` the aligners' stochastic
  sampling uses (REINFORCE/PPO need Gaussian transitions).
  """
  chain_kw = dict(num_grad_steps=num_grad_steps, return_chain=return_chain)
  if sampler == "flow":
    loss = functools.partial(flow_matching.flow_matching_loss, denoise_fn=denoise_fn)
    return Generator(loss, flow_matching.make_flow_sampler(denoise_fn, sample_steps, **chain_kw),
                     sample_steps, functools.partial(loss, per_sample=True),
                     {"noise_scale": stochastic_scale}, denoise_fn)
  if sampler not in SAMPLERS:
    raise ValueError(f"unknown sampler {sampler!r}; known: {SAMPLERS}")
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {schedule!r}; known: {tuple(SCHEDULES)}")
  sched = SCHEDULES[schedule](train_steps)
  loss = functools.partial(losses.diffusion_loss, denoise_fn=denoise_fn, sched=sched,
                           pred_type=pred_type)
  errors = functools.partial(loss, per_sample=True)
  kw = dict(pred_type=pred_type, clip_x0=clip_x0, **chain_kw)
  if sampler == "ddpm":
    return Generator(loss, ddpm.make_ddpm_sampler(denoise_fn, sched, **kw), train_steps, errors,
                     {}, denoise_fn)
  if sampler == "ddim":
    sample = ddim.make_ddim_sampler(denoise_fn, sched, sample_steps, **kw).replace(
        defaults={"eta": ddim_eta})
    return Generator(loss, sample, sample_steps, errors, {"eta": stochastic_scale}, denoise_fn)
  n = max(sample_steps, 2) if sampler == "sde" else sample_steps
  make = sde.make_sde_sampler if sampler == "sde" else sde.make_ode_sampler
  return Generator(loss, make(denoise_fn, sched, n, **kw), n, errors,
                   {} if sampler == "sde" else None, denoise_fn)
