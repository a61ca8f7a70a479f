#!/usr/bin/env bash
# Builds the tiny test guests into build/test-guests/ (or $1). Needs gcc and binutils.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../build/test-guests}
mkdir -p "$out"
for action in hello echo fault halt; do
    obj="$out/$action.o"
    gcc -c -nostdlib -D"ACTION_${action^^}" -o "$obj" "$here/guest.S"
    for entry in pvh lm64; do
        ld -static -nostdlib -z noexecstack --no-warn-rwx-segments -T "$here/$entry.ld" -o "$out/$action-$entry.elf" "$obj"
    done
    rm -f "$obj"
done
