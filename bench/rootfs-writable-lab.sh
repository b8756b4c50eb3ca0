#!/usr/bin/env bash
# Where a container's writes should go (issue 13): metadata-heavy work (2,000 small files
# created, listed and read, tarred and removed, untarred, removed) in a privileged busybox
# container, on its root file system, then in the container on an overlay whose upper layer is a
# tmpfs (in Hull: in the guest) over that root, then on a plain tmpfs; runc and Hull alternating.
# Seconds from /proc/uptime inside the container.
#
# usage (host):  bench/rootfs-writable-lab.sh [ROUNDS]   runs itself inside the lab (tests/lab/lab.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rounds="${1:-2}"
if [[ "${HULL_LAB:-}" != 1 ]]; then
    HULL_KERNEL="${HULL_KERNEL:-$("$root/kernel-config/build.sh")/vmlinux}"
    HULL_INITRD="${HULL_INITRD:-$("$root/rootfs/build.sh")}"
    export HULL_KERNEL HULL_INITRD HULL_LAB=1
    HULL_LAB_ROOT_CACHE="${HULL_LAB_ROOT_CACHE:-always}" \
        exec "$root/tests/lab/lab.sh" --timeout 2400 -- "$0" "$rounds"
fi
cd "$root"
addr="$(tests/lab/containerd.sh start)"
trap 'tests/lab/containerd.sh stop >/dev/null 2>&1' EXIT
# shellcheck disable=SC2016 # runs in the container's shell
work='
up() { cut -d" " -f1 /proc/uptime; }
dt() { awk -v a="$1" -v b="$2" "BEGIN { printf \"%.2f\", b - a }"; }
run() { # DIR LABEL
  d=$1; t0=$(up); mkdir -p $d/src; i=0
  while [ $i -lt 2000 ]; do echo $i > $d/src/f$i; i=$((i+1)); done
  t1=$(up); ls -l $d/src > /dev/null; cat $d/src/* > /dev/null; t2=$(up)
  tar -cf $d/a.tar -C $d src; rm -rf $d/src; t3=$(up)
  tar -xf $d/a.tar -C $d; t4=$(up); rm -rf $d/src $d/a.tar; t5=$(up)
  echo "RESULT $2 create=$(dt $t0 $t1) stat+read=$(dt $t1 $t2) tar+rm=$(dt $t2 $t3) untar=$(dt $t3 $t4) rm=$(dt $t4 $t5)"
}
run /work1 root
mkdir -p /up /merged; mount -t tmpfs -o size=256m tmpfs /up; mkdir -p /up/u /up/w
mount -t overlay overlay -o lowerdir=/,upperdir=/up/u,workdir=/up/w /merged && run /merged/work2 overlay-tmpfs-upper
run /up/plain tmpfs
'
for round in $(seq "$rounds"); do
    for rt in io.containerd.runc.v2 io.containerd.hull.v2; do
        echo "== round $round $rt"
        timeout 900 ctr --address "$addr" run --rm --privileged --runtime "$rt" \
            docker.io/library/busybox:latest "wr-$round-${rt//./-}" sh -c "$work" 2>&1 | grep -E 'RESULT|rror' || true
    done
done
