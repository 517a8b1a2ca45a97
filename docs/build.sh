#!/usr/bin/env bash
# Build the HTML documentation with warnings as errors. Installs nothing: run
#   .venv/bin/pip install -e ".[docs]"
# once first. Uses .venv/bin/sphinx-build when the repository's venv exists, else sphinx-build from PATH.
# Extra arguments are passed to sphinx-build (e.g. -D plot_gallery=0 to skip the examples).
set -euo pipefail
cd "$(dirname "$0")/.."
SPHINX_BUILD=sphinx-build
if [ -x .venv/bin/sphinx-build ]; then SPHINX_BUILD=.venv/bin/sphinx-build; fi
export MPLBACKEND=Agg
start=$(date +%s)
"$SPHINX_BUILD" -W --keep-going -b html "$@" docs docs/_build/html
echo "docs built in $(( $(date +%s) - start )) s: docs/_build/html/index.html"
