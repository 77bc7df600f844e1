#!/usr/bin/env bash
# The whole seqlib loop on the embedded (pretrained, offline) base: about five minutes on 2 CPU cores.
# Usage: examples/quickstart.sh [WORKDIR]   (default: ./quickstart; its .seqlib and out/ are replaced)
set -euo pipefail
examples=$(cd "$(dirname "$0")" && pwd)
work=${1:-quickstart}
mkdir -p "$work"
cd "$work"
rm -rf .seqlib out

set -x
seqlib init
seqlib add mascot "$examples/mascot"
seqlib add emblem "$examples/emblem"
seqlib add robot "$examples/robot"
seqlib status
seqlib compose mascot --prompt "a photo of <mascot>" --seed 0 -n 4 --grid --out out/mascot
seqlib compose mascot,robot --prompt "a photo of <mascot> on the left and <robot> on the right" \
    --seed 0 -n 4 --grid --out out/mascot+robot
seqlib log
