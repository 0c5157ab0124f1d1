#!/bin/bash
. /work/main/.venv/bin/activate
export DMC_JAX_COMPILATION_CACHE=
for code in cOld cK; do
  echo "== $code"; cd /tmp/exp/$code
  PYTHONPATH=. python /tmp/exp/pre/micro2.py 256 2>&1 | grep -v Warn | tail -2
  PYTHONPATH=. python /tmp/exp/pre/probe3.py 2>&1 | grep -v Warn | tail -1
done
