"""The diffusion core: schedules, losses, samplers. Every function here is PURE."""
from dmc_jax.diffusion.chain import Chain, Inpaint, SamplerOutput, run_chain, transition_log_prob
from dmc_jax.diffusion.ddim import ddim_timesteps, make_ddim_sampler
from dmc_jax.diffusion.ddpm import make_ddpm_sampler
from dmc_jax.diffusion.flow_matching import flow_matching_loss, make_flow_sampler
from dmc_jax.diffusion.losses import diffusion_loss, weighted_mse
from dmc_jax.diffusion.parametrization import make_guided_denoise_fn, q_sample
from dmc_jax.diffusion.schedules import (ContinuousVP, Schedule, make_cosine_schedule,
                                         make_linear_schedule, make_vp_schedule)
from dmc_jax.diffusion.sde import make_ode_sampler, make_sde_sampler
