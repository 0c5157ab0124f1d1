#!/bin/bash
cd /tmp/exp/t3
. /work/main/.venv/bin/activate
export MINARI_DATASETS_PATH=/tmp/exp/plan/minari DMC_JAX_COMPILATION_CACHE=/tmp/exp/plan/cache
date
python -m launch.train --config=configs/nav1d.py:dd,partial --config.diffusion.sampler=ddpm "--config.align.eval_selections=('first','expectation','argmax')" --workdir=/tmp/exp/diag/f
date
