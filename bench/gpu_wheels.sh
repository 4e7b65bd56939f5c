#!/usr/bin/env bash
# The wheels bench/gpu.py needs on the lent GPU machine (device tool, nvidia-h200), fetched here.
#
#     bash bench/gpu_wheels.sh          # fills .whl/ (ignored by git), prints the run's command
#
# That machine has Python 3.12 with torch 2.11 and transformers 5.17 but no registry and no
# pydicom (.library/device/KINDS.md): the transformers the tests ran (pinned in pyproject.toml)
# travels as wheels with what it needs beyond that machine's packages, at the versions of this
# checkout's .venv, so the GPU runs the code the tests ran. Then, with `.whl` in the run's carry:
#
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; \
#       PYTHONUNBUFFERED=1 python3 bench/gpu.py
#
# bench/gpu.py --smoke runs the same steps here first (CI runs it too).
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"

# transformers and what it needs that the GPU machine lacks or has too old (huggingface_hub 2,
# its httpx2 client, kernels), and pydicom for the benchmark's synthetic radiograph.
names=(transformers huggingface_hub httpx2 httpcore2 truststore hf-xet kernels tomlkit regex
  click anyio idna tokenizers pydicom)
pins=()
for name in "${names[@]}"; do
  pins+=("$name==$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))")")
done
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${pins[@]}"
ls .whl
echo "wheels: $(du -sh .whl | cut -f1) (a run carries at most 64 MiB with the tree)"
