#!/usr/bin/env bash
# The module graph has no circle between top-level modules, and docs/ARCHITECTURE.md shows the graph the code has
# (the block between its modgraph markers is tools/modgraph.py's output, verbatim).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

graph=$(python3 tools/modgraph.py src)
if ! grep -qx 'top-level modules [0-9]*, circles: 0' <<<"$graph"; then
    echo "check-architecture: FAIL: the module graph has a circle:" >&2
    echo "$graph" >&2
    exit 1
fi
documented=$(sed -n '/<!-- modgraph:begin -->/,/<!-- modgraph:end -->/p' docs/ARCHITECTURE.md | sed '1,2d;$d' | sed '$d')
if [[ "$documented" != "$graph" ]]; then
    echo "check-architecture: FAIL: docs/ARCHITECTURE.md's module graph is not the code's; replace it with:" >&2
    echo "$graph" >&2
    exit 1
fi
echo "check-architecture: no circle; docs/ARCHITECTURE.md matches the code"
