#!/bin/bash
cd /tmp/exp/t2/src
. /work/main/.venv/bin/activate
export MINARI_DATASETS_PATH=/tmp/exp/plan/minari DMC_JAX_COMPILATION_CACHE=/tmp/exp/plan/cache
C="--config=configs/nav1d.py:dd,partial --config.diffusion.sampler=ddpm --config.align.stages=('rl',) --config.align.eval_selections=('first','expectation','argmax')"
date
python -m launch.train $C --config.align.max_chunks=18 --workdir=/tmp/exp/diag/a
date
python -m launch.train $C --config.align.reward=first --workdir=/tmp/exp/diag/b
date
