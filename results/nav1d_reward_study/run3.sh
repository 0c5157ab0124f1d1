#!/bin/bash
while pgrep -f run2.sh >/dev/null; do sleep 5; done
cd /tmp/exp/t2/src
. /work/main/.venv/bin/activate
export MINARI_DATASETS_PATH=/tmp/exp/plan/minari DMC_JAX_COMPILATION_CACHE=/tmp/exp/plan/cache
S="--config.align.eval_selections=('first','expectation','argmax') --config.align.reward=first"
date
python -m launch.train --config=configs/nav1d.py:diffuser,full --config.diffusion.sampler=ddpm $S --workdir=/tmp/exp/diag/e
date
