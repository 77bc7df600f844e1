#!/usr/bin/env bash
# The whole seqlib loop on the embedded (pretrained, offline) base: 5-20 minutes on 2 CPU cores, by machine.
# Usage: examples/quickstart.sh [WORKDIR]   (default: ./quickstart; its .seqlib and out/ are replaced)
set -euo pipefail
examples=$(cd "$(dirname "$0")" && pwd)
work=${1:-quickstart}
mkdir -p "$work"
cd "$work"
rm -rf .seqlib out

set -x
seqlib init
# each concept is learned on the bare base (--context base, the default; its basis still orthogonal
# to the others'), so it renders as itself alone; --context library learns on top of the earlier ones.
for concept in mascot emblem robot; do
    seqlib add "$concept" "$examples/$concept"
done
seqlib status
for concept in mascot emblem robot; do
    seqlib compose "$concept" --prompt "a photo of <$concept>" --seed 0 -n 4 --grid --out "out/$concept"
done
# Summed into one image from one prompt (the method's composition): this tiny base cannot lay out two
# concepts from a prompt. As a row, each concept gets its own tile, residual and prompt.
seqlib compose mascot,robot --prompt "a photo of <mascot> on the left and <robot> on the right" \
    --seed 0 -n 4 --grid --out out/mascot+robot
seqlib compose mascot,robot --layout row --prompt "a photo of <mascot> | a photo of <robot>" \
    --seed 0 -n 4 --grid --out out/mascot+robot-row
seqlib recipe save pair mascot,robot --layout row --prompt "a photo of <mascot> | a photo of <robot>" -n 4
seqlib compose @pair --out out/pair   # the recipe, replayed: the same pixels as the row above
seqlib log
seqlib report -o out/report.html      # every concept, its preview and loss curve, capacity, crosstalk, history
