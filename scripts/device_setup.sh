#!/usr/bin/env bash
# Make sparsebench runnable on the GPU machine (no package index), in the disposable copy of the tree a run gets.
# Before, here: `bash ../shared/device/stage.sh tqdm==4.70.1 wonderwords==3.0.1 rouge==1.0.1` and
# `pip download --no-deps -d .stage/tf transformers==5.24.0` (the GPU image's transformers 5.17 builds a wrong gemma3
# tokenizer from the GGUF: check_tokenizer refuses it). Then runs back to back on one warm machine, each carrying one
# of .stage/g1 + .stage/py, .stage/g2, .stage/g3, .stage/g4, .stage/tf (each under 64 MiB with the tree): every run
# installs the wheels it carries into /tmp/site, which lasts as long as the machine.
# Usage, at the start of every GPU run, from the project root:  source scripts/device_setup.sh
mkdir -p /tmp/site/.sb_installed
for w in .stage/*/*.whl; do
  [ -e "$w" ] || continue
  [ -e "/tmp/site/.sb_installed/$(basename "$w")" ] && continue
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$w" 2>&1 \
    | grep -v "already exists\|WARNING: Running pip" || true
  touch "/tmp/site/.sb_installed/$(basename "$w")"
done
# the mounted folders as links inside the source package: `python -m sparsebench` and pytest then work from the
# project root without an install (the copy is thrown away after the run)
for d in kernels methods tasks conf; do ln -sfn ../$d sparsebench/$d; done
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import sparsebench.kernels.block_sparse_attn, sparsebench.conf, transformers; print('sparsebench ready,', 'transformers', transformers.__version__)"
ls /tmp/site/.sb_installed
