#!/usr/bin/env bash
# Build the wheel, install it into a fresh environment outside the clone, and run the
# installed `dip` from a folder with no configs/: the built-in presets and the embedded sample.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$repo"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet torch==2.13.0
"$work/venv/bin/pip" install --quiet "$work"/dist/*.whl
mkdir "$work/run" && cd "$work/run"
"$work/venv/bin/dip" --version
"$work/venv/bin/dip" presets
"$work/venv/bin/dip" fit --config denoise --trainer.max_steps 3 --trainer.enable_progress_bar false
test -s lightning_logs/version_0/restored.png
test -s lightning_logs/version_0/metrics.json
sample=$("$work/venv/bin/python" -c "from dip_lightning.data.datamodule import sample_image_path; print(sample_image_path())")
"$work/venv/bin/dip" restore "$sample" -o restored.png --max-steps 5 --metrics metrics.json --quiet
"$work/venv/bin/python" -c "from PIL import Image; assert Image.open('restored.png').size == Image.open('$sample').size"
test -s metrics.json
echo "wheel: installed dip (fit, restore) ran from $(pwd) with the built-in presets"
