#!/usr/bin/env bash
# Installs the Debian packages the SLURM test (tests/test_slurm.py) boots a private
# single-node cluster from: munge, slurmctld, slurmd, the client commands, and slurmdbd with
# MariaDB so that `sacct` (the SLURM executor plugin's default status query) has records.
# Idempotent and quiet: does nothing when every command is already installed.
# Needs root, or passwordless sudo.
set -euo pipefail

missing=0
for cmd in munged slurmctld slurmd sbatch srun sacct sacctmgr slurmdbd mariadbd; do
    if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1; then
        missing=1
    fi
done
[ "$missing" -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "slurm-setup: installing munge, slurm and mariadb needs root or passwordless sudo" >&2
    exit 1
fi

# Package scripts must not start services: the test starts its own daemons under a
# temporary directory and stops them itself.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
    "${as_root[@]}" chmod 755 "$policy"
    created_policy=1
fi
cleanup() { if [ "$created_policy" -eq 1 ]; then "${as_root[@]}" rm -f "$policy"; fi; }
trap cleanup EXIT

"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends munge slurmctld slurmd slurm-client slurmdbd mariadb-server \
    >/dev/null
