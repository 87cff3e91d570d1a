#!/usr/bin/env bash
# Installs and starts a single-node Slurm cluster on loopback, for the Slurm executor's tests
# (tests/slurm.rs) and for trying `axbench run --executor slurm` on one machine. Idempotent:
# a second run finds the packages installed and the daemons up and only prints `sinfo`.
#
# Debian 12 packages (slurm-wlm 22.05, munge); no systemd (daemons are started directly), no
# cgroups, no accounting (so `sacct` does not work: the executor reads exit-code files instead).
# The node offers 8 CPUs whatever the machine has (toy test jobs are tiny) and 2 fake GPUs as a
# generic resource without device files, so `--gres=gpu:1` is accepted and scheduled like on a
# real GPU partition. Needs root; on a real cluster use the site's Slurm instead.
#
#   SLURM_UP_CPUS   CPUs the node advertises (default 8)
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "slurm-up: needs root (it installs packages and starts daemons)" >&2
  exit 1
fi
NODE=$(hostname -s)
CPUS=${SLURM_UP_CPUS:-8}
MEM_MB=$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.8 }' /proc/meminfo)

# ---- packages ---------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null || ! command -v pgrep >/dev/null; then
  command -v apt-get >/dev/null || { echo "slurm-up: no apt-get; install slurmctld, slurmd, slurm-client and munge by hand" >&2; exit 1; }
  # Keep the packages' maintainer scripts from starting daemons (no init system to manage them).
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # procps: pgrep/ps, with which tests/slurm.rs finds a task's processes to kill.
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge procps >&2
  rm -f /usr/sbin/policy-rc.d
  trap - EXIT
fi

# ---- configuration ----------------------------------------------------------------------------
mkdir -p /etc/slurm
conf=$(cat <<CONF
# Written by axbench scripts/slurm-up.sh: single node, loopback only, no accounting.
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
CredType=cred/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
SlurmdParameters=config_overrides
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MaxArraySize=10001
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
)
gres="NodeName=$NODE Name=gpu File=/dev/null Count=1
NodeName=$NODE Name=gpu File=/dev/zero Count=1"
changed=0
if [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "$conf" ]; then printf '%s\n' "$conf" > /etc/slurm/slurm.conf; changed=1; fi
if [ "$(cat /etc/slurm/gres.conf 2>/dev/null)" != "$gres" ]; then printf '%s\n' "$gres" > /etc/slurm/gres.conf; changed=1; fi

# ---- daemons ----------------------------------------------------------------------------------
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
chown slurm:slurm /var/spool/slurmctld /var/log/slurm
chown munge:munge /run/munge
chmod 755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey -c
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  munge -n | unmunge >/dev/null
fi
if [ "$changed" = 1 ]; then
  # A new configuration: restart whatever runs with the old one.
  for pid in /run/slurmd.pid /run/slurmctld.pid; do
    if running "$pid"; then kill "$(cat "$pid")"; for _ in $(seq 50); do running "$pid" || break; sleep 0.1; done; fi
  done
fi
running /run/slurmctld.pid || /usr/sbin/slurmctld
running /run/slurmd.pid || /usr/sbin/slurmd
for _ in $(seq 1 100); do
  sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && break
  sleep 0.2
done
# A node that went down (a restart while jobs ran) is brought back.
if sinfo -h -o %T 2>/dev/null | grep -qE 'down|drain'; then scontrol update NodeName="$NODE" State=RESUME || true; fi
sinfo
