"""gymnasium MuJoCo locomotion (Hopper, Walker2d, HalfCheetah) from Minari datasets.

``--config=configs/mujoco.py:MODEL,ENV[,DATASET][,smoke]`` with MODEL in ``diffuser | dd | dp``,
ENV in ``hopper | walker2d | halfcheetah`` and DATASET one of:

* a published Minari quality (``medium`` (default), ``expert``, ``simple``): the id
  ``mujoco/ENV/DATASET-v0``, which must be local (``minari download mujoco/hopper/medium-v0``
  on a machine with network access, then copy ``MINARI_DATASETS_PATH``);
* ``random`` or ``ars``: ``dmc_jax/ENV/DATASET-v0``, collected here (uniform random actions,
  or a briefly trained linear ARS controller) when missing;
* any other Minari id or dataset path.

Results report the return and, where the dataset carries reference returns (the published
ones and ours), the D4RL normalised score.
"""
from configs import nav1d

ENVS = ("hopper", "walker2d", "halfcheetah")
GENERATED = ("random", "ars")
NUM_EPISODES = 200  # episodes collected when a generated dataset is missing


def dataset_id(env: str, dataset: str) -> str:
  if "/" in dataset:
    return dataset
  if dataset in GENERATED:
    return f"dmc_jax/{env}/{dataset}-v0"
  return f"mujoco/{env}/{dataset}-v0"


def get_config(arg: str | None = None):
  parts, smoke = nav1d.parse_arg(arg)
  if len(parts) > 3:
    raise ValueError(f"config arg {arg!r}: expected MODEL,ENV[,DATASET][,smoke]")
  env = parts[1] if len(parts) > 1 else "hopper"
  if env not in ENVS:
    raise ValueError(f"config arg {arg!r}: env {env!r} is not one of {ENVS}")
  c = nav1d.apply_model(nav1d.base_config(), parts[0] if parts else "dp")
  c.task = "minari"
  c.data.dataset = dataset_id(env, parts[2] if len(parts) > 2 else "medium")
  c.data.num_episodes = NUM_EPISODES
  c.data.normalizer = "gaussian"
  c.diffusion.clip_x0 = -1.0  # auto: the data's range in gaussian units (1 would cut it)
  c.data.reward_scale = 0.1
  c.env.max_steps = 1000
  c.eval.num_episodes = 16
  c.eval.curve_episodes = 4
  if smoke:
    c = nav1d.apply_smoke(c)
    c.data.num_episodes, c.env.max_steps = 3, 20
    c.eval.num_episodes, c.eval.curve_episodes = 2, 2
  return c
