#!/usr/bin/env bash
# The GPU measurements and checks of the README's Performance section, on a GPU machine
# that has torch and Lightning but not Hydra and cannot download: --prepare copies
# hydra-core, omegaconf and antlr4 into .gpu/site and MNIST, gzipped, into .gpu/data, to be
# copied there with the checkout.
#   here:   bash benchmarks/gpu.sh --prepare
#   there:  bash benchmarks/gpu.sh [throughput] [e2e] [tests] [options] [mnist]   (log: $OUT/gpu.log)
set -u -o pipefail
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
parts=${*:-throughput e2e mnist}
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT" /tmp/data/MNIST/raw /tmp/work
exec > >(tee "$OUT/gpu.log") 2>&1
export PYTHONUNBUFFERED=1 WANDB_MODE=offline PYTHONPATH="$PWD/.gpu/site:$PWD" VAE_DATA_DIR=/tmp/data
for f in .gpu/data/MNIST/raw/*.gz; do gunzip -c "$f" > "/tmp/data/MNIST/raw/$(basename "$f" .gz)"; done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())"
quiet() { grep -v -E "Warning|litlogger|it/s\]|^\s*$" || true; }
tp() { timeout "$1" python3 benchmarks/throughput.py --workdir /tmp/work --warmup 50 --steps 300 "${@:2}" 2>&1 | quiet; }
fail=0
for part in $parts; do
    echo "=== $part"
    case $part in
    throughput)  # conv_vae on the 64x64 CelebA cache: the default (float32, data on the GPU), then the options
        tp 200 --cases celeba-conv --pairs 3 --set logger=csv data.num_workers=8 || fail=1
        tp 60 --cases celeba-conv --pairs 1 --set logger=csv data.num_workers=8 data.on_device=false || fail=1
        tp 60 --cases celeba-conv --pairs 2 --set logger=csv trainer.precision=bf16-mixed || fail=1
        tp 60 --cases celeba-conv --pairs 2 --set logger=csv trainer.precision=bf16-mixed model.channels_last=true || fail=1
        tp 120 --cases celeba-conv --pairs 1 --set logger=csv trainer.precision=bf16-mixed model.compile=true || fail=1 ;;
    e2e)  # the README's first command on the GPU (10 epochs of the MLP + the k=1000 test), then sample.py
        start=$(date +%s)
        timeout 200 python3 train.py logger=csv hydra.run.dir=/tmp/logs/make_train 2>&1 | quiet | tail -30 || fail=1
        echo "make train on the GPU: $(( $(date +%s) - start )) s"
        cp /tmp/logs/make_train/metrics.json "$OUT/make_train_metrics.json"
        cp /tmp/logs/make_train/report.png "$OUT/make_train_report.png"
        timeout 60 python3 sample.py ckpt_path=/tmp/logs/make_train mode=prior n=64 2>&1 | quiet | tail -5 || fail=1
        find /tmp/logs/make_train -name "prior.png" -exec cp {} "$OUT/make_train_prior.png" \; ;;
    tests)  # the tests that train through conftest's make_cfg, on the GPU
        VAE_TEST_ACCELERATOR=gpu timeout 240 python3 -m pytest -q -p no:cacheprovider \
            tests/test_speed.py tests/test_module.py tests/test_resume.py 2>&1 | tail -30 || fail=1 ;;
    options)  # float32 with each option alone (throughput measures them next to bf16)
        tp 100 --cases celeba-conv --pairs 1 --set logger=csv data.num_workers=8 model.channels_last=true || fail=1
        tp 90 --cases celeba-conv --pairs 1 --set logger=csv model.compile=true || fail=1 ;;
    mnist)
        tp 150 --cases mnist-vae mnist-conv --pairs 2 --set logger=csv || fail=1 ;;
    esac
done
exit $fail
