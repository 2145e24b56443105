#!/usr/bin/env bash
# The GPU measurements of the README's Performance section, in one call of the device
# machine (an H200 lent for 15 minutes, with torch and Lightning but without Hydra, so
# hydra-core, omegaconf and antlr4 travel in .gpu/site, and MNIST gzipped in .gpu/data).
# Prepare here:   bash benchmarks/gpu.sh --prepare
# Run there:      bash benchmarks/gpu.sh          (results in $OUT/gpu.log)
set -u
if [ "${1:-}" = "--prepare" ]; then
    site=$(.venv/bin/python -c "import hydra, pathlib; print(pathlib.Path(hydra.__file__).parents[1])")
    mkdir -p .gpu/site .gpu/data/MNIST/raw
    for pkg in hydra omegaconf antlr4 hydra_core-*.dist-info omegaconf-*.dist-info antlr4_python3_runtime-*.dist-info; do
        cp -r "$site"/$pkg .gpu/site/
    done
    for f in "${VAE_DATA_DIR:-../shared/data}"/MNIST/raw/*-ubyte; do gzip -c "$f" > ".gpu/data/MNIST/raw/$(basename "$f").gz"; done
    grep -qx "/.gpu/" .git/info/exclude || echo "/.gpu/" >> .git/info/exclude
    exit 0
fi
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT" /tmp/data/MNIST/raw /tmp/work
exec > >(tee "$OUT/gpu.log") 2>&1
export PYTHONUNBUFFERED=1 WANDB_MODE=offline PYTHONPATH="$PWD/.gpu/site:$PWD" VAE_DATA_DIR=/tmp/data
for f in .gpu/data/MNIST/raw/*.gz; do gunzip -c "$f" > "/tmp/data/MNIST/raw/$(basename "$f" .gz)"; done
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())"
nproc
tp() { timeout "$1" python3 benchmarks/throughput.py --workdir /tmp/work --warmup 50 --steps 300 "${@:2}" 2>&1 | grep -v -i -E "warn|litlogger|^\s*$"; }
# 1. conv_vae on the 64x64 CelebA cache: the default (float32, data on the GPU), then the speed options
tp 200 --cases celeba-conv --pairs 3 --set logger=csv data.num_workers=8
tp 60 --cases celeba-conv --pairs 1 --set logger=csv data.num_workers=8 data.on_device=false
tp 60 --cases celeba-conv --pairs 2 --set logger=csv data.num_workers=8 trainer.precision=bf16-mixed
tp 60 --cases celeba-conv --pairs 2 --set logger=csv trainer.precision=bf16-mixed model.channels_last=true
# 2. the README's first command (10 epochs of the MLP on MNIST + the k=1000 test) on the GPU
start=$(date +%s)
timeout 150 python3 train.py logger=csv paths.log_dir=/tmp/logs hydra.run.dir=/tmp/logs/make_train 2>&1 | grep -v -i -E "warn|litlogger" | tail -25
echo "make train on the GPU: $(( $(date +%s) - start )) s"
cp /tmp/logs/make_train/metrics.json "$OUT/make_train_metrics.json" 2>/dev/null
# 3. the MNIST cases, then torch.compile
tp 120 --cases mnist-vae mnist-conv --pairs 2 --set logger=csv
tp 120 --cases celeba-conv --pairs 1 --set logger=csv trainer.precision=bf16-mixed model.compile=true
