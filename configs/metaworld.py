"""MetaWorld v3 tasks from generated Minari datasets: pretrain -> align -> evaluate.

``--config=configs/metaworld.py:MODEL,TASK[,QUALITY][,smoke]`` with MODEL in
``diffuser | dd | dp``, TASK one of MetaWorld's v3 tasks (the seed paper's four:
``button-press``, ``drawer-open``, ``sweep-into``, ``plate-slide``) and QUALITY in
``expert | medium | random`` (default ``medium``). The dataset
``dmc_jax/metaworld/TASK/QUALITY-v0`` is generated with MetaWorld's scripted policy when it is
not local (``python -m launch.make_metaworld_data`` writes them ahead of time). Evaluation
reports the success rate and the return over episode seeds (each seed is one task variation).
"""
from configs import nav1d

QUALITIES = ("expert", "medium", "random")
NUM_EPISODES = 200  # episodes generated when the dataset is missing (150 steps each)

# The environment guard also watches the deployed IDQL controller on MetaWorld (the schema's
# guard watches the sampler alone, `first`). The critic learns the dense return, which does
# not encode success: on button-press `medium` (DP, seed 0, the default scheduler of
# 2026-12-06) the kept stages raised the `argmax` controller's return 153 -> 171 and
# dropped its success 1.00 -> 0.28 while `first` rose 0.91 -> 1.00, so nothing was reverted.
# Measured on the eight DP and Diffuser cells (BUILD_NOTES, "MetaWorld: the guard watches the
# deployed controller" and "MetaWorld: the Diffuser aligns with the Q-gradient"): with the
# Diffuser's Q-gradient (its default since 2026-12-07) success after >= before for both
# selections in 7 of 8 cells, RL kept in 4 of 8.
GUARD_SELECTIONS = ("argmax",)


def get_config(arg: str | None = None):
  parts, smoke = nav1d.parse_arg(arg)
  if len(parts) > 3:
    raise ValueError(f"config arg {arg!r}: expected MODEL,TASK[,QUALITY][,smoke]")
  model = parts[0] if parts else "dp"
  task = (parts[1] if len(parts) > 1 else "button-press").removesuffix("-v3")
  quality = parts[2] if len(parts) > 2 else "medium"
  if quality not in QUALITIES:
    raise ValueError(f"config arg {arg!r}: quality {quality!r} is not one of {QUALITIES}")
  c = nav1d.apply_model(nav1d.base_config(), model)
  c.task = "minari"
  c.data.dataset = f"dmc_jax/metaworld/{task}/{quality}-v0"
  c.data.num_episodes = NUM_EPISODES
  c.data.reward_scale = 0.1  # MetaWorld rewards are in [0, 10] per step
  c.env.max_steps = 150  # the datasets' episode length
  c.eval.num_episodes = 32
  c.eval.curve_episodes = 8
  c.align.guard_selections = GUARD_SELECTIONS
  if smoke:
    c = nav1d.apply_smoke(c)
    c.data.num_episodes, c.env.max_steps = 6, 30
    c.eval.num_episodes, c.eval.curve_episodes = 2, 2
  return c
