#!/usr/bin/env bash
# Exit 0 if this machine's /dev/kvm cannot run real Linux guests (PVM, or no
# hardware virtualization), so they must run inside the nested-KVM box
# (resources/box/box.sh); exit 1 if Linux guests can run directly here.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/box.sh" need
