#!/usr/bin/env bash
# Installs the Debian packages the SLURM test (tests/test_slurm.py) boots a private
# single-node cluster from: munge, slurmctld, slurmd, the client commands, and slurmdbd with
# MariaDB so that `sacct` (the SLURM executor plugin's default status query) has records.
# Idempotent: does nothing when every command is already on PATH. Needs root (apt-get).
set -euo pipefail

needed=(munged slurmctld slurmd sbatch slurmdbd mariadbd)
missing=0
for cmd in "${needed[@]}"; do
    if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1; then
        missing=1
    fi
done
if [ "$missing" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "slurm-setup: root is needed to install munge, slurm and mariadb packages" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Package scripts must not start services: the test starts its own daemons, as its own user,
# under a temporary directory, and stops them itself.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
fi
trap '[ "$created_policy" -eq 1 ] && rm -f "$policy"' EXIT

apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    munge slurmctld slurmd slurm-client slurmdbd mariadb-server >/dev/null
