#!/bin/bash
# Back to back, before and after the conv fix: bash ab.sh OLD_CLONE NEW_CLONE
# (clones of this repository checked out at b922855 and f475c36; an activated venv).
here=$(cd "$(dirname "$0")" && pwd)
export DMC_JAX_COMPILATION_CACHE=
for code in "$1" "$2"; do
  echo "== $code"; cd "$code"
  PYTHONPATH=. python "$here/micro2.py" 256 2>&1 | grep -v Warn | tail -2
  PYTHONPATH=. python "$here/probe3.py" 2>&1 | grep -v Warn | tail -1
done
