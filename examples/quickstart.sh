#!/usr/bin/env bash
# The whole seqlib loop on the embedded base, offline: about a minute on 2 CPU cores.
# Usage: examples/quickstart.sh [WORKDIR]   (default: ./quickstart; its .seqlib and out/ are replaced)
set -euo pipefail
examples=$(cd "$(dirname "$0")" && pwd)
work=${1:-quickstart}
mkdir -p "$work"
cd "$work"
rm -rf .seqlib out

set -x
seqlib init
seqlib add mascot "$examples/mascot" --init-word toy
seqlib add emblem "$examples/emblem" --init-word picture
seqlib status
seqlib compose mascot,emblem --prompt "a photo of <mascot> and <emblem>" --seed 0 --out out/
seqlib log
