#!/usr/bin/env bash
# Where the container-root untar of `make bench` loses time in the lab: the same work (2,000
# small files made, tarred, extracted with busybox `tar x` with and without owner-name lookups,
# removed; plus 300 fork+execs) at three levels of one lab run, with no container runtime:
#   l1       the lab VM itself, in a chroot of the test image (where runc's containers run);
#   qemu     a bare guest of Hull's kernel under QEMU -M microvm with KVM (nested: L2);
#   hull-vmm the same guest under hull-vmm (L2).
# Each on a tmpfs and on an overlay of tmpfs (a container root's shape). The ratios of the two
# L2 columns to l1 are the nested emulation's own cost, which a Hull container pays too and a
# host with hardware KVM does not; Hull's container path adds its cost on top of them.
#
# usage (host):  bench/untar-levels-lab.sh [ROUNDS]     (default 2; ~4 min per round)
# usage (lab):   run by the above inside tests/lab/lab.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rounds="${1:-2}"
[[ $rounds =~ ^[1-9][0-9]?$ ]] || { echo "usage: $0 [ROUNDS 1-99]" >&2; exit 2; }

guest_script() {
    cat <<'EOF'
#!/bin/busybox sh
B=/bin/busybox
up() { $B cut -d' ' -f1 /proc/uptime; }
dt() { $B awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }
$B mount -t tmpfs tmpfs /t
cd /t && $B mkdir -p l u w o
$B mount -t overlay overlay -o lowerdir=/t/l,upperdir=/t/u,workdir=/t/w /t/o
a=$(up); i=0; while [ $i -lt 300 ]; do $B true; i=$((i+1)); done; b=$(up)
echo "R $WHERE - fork-exec-300 $(dt $a $b)"
for fs in tmpfs overlay; do
  d=/t; [ $fs = overlay ] && d=/t/o
  cd $d
  a=$(up); $B mkdir s; i=0; while [ $i -lt 2000 ]; do echo $i > s/f$i; i=$((i+1)); done; b=$(up)
  echo "R $WHERE $fs create-2000 $(dt $a $b)"
  $B tar cf a.tar s; $B rm -rf s
  for r in 1 2 3; do
    for args in plain --numeric-owner; do
      x=""; [ $args = plain ] || x=$args
      $B mkdir x; a=$(up); $B tar xf a.tar $x -C x; b=$(up); echo "R $WHERE $fs untar-$args $(dt $a $b)"
      a=$(up); $B rm -rf x; b=$(up); echo "R $WHERE $fs rm-2000 $(dt $a $b)"
    done
  done
  $B rm -f a.tar
done
EOF
}

if [[ "${HULL_LAB:-}" != 1 ]]; then
    (cd "$root" && cargo build -q --release -p hull-vmm)
    export HULL_KERNEL="${HULL_KERNEL:-$("$root/kernel-config/build.sh" --path)/vmlinux}"
    work="$(mktemp -d /var/tmp/hull-untar-levels.XXXXXX)"
    trap 'rm -rf "$work"' EXIT
    tree="$work/root"
    mkdir -p "$tree"/{bin,dev,proc,sys,t,etc}
    cp /bin/busybox "$tree/bin/busybox"
    file -b "$tree/bin/busybox" | grep -q 'statically linked' \
        || { echo "/bin/busybox is not static: install busybox-static (make setup)" >&2; exit 1; }
    # A busybox image's own account files: the lookups of `tar x` read these.
    printf '%s\n' root:x:0:0:root:/root:/bin/sh daemon:x:1:1:daemon:/usr/sbin:/bin/false \
        bin:x:2:2:bin:/bin:/bin/false sys:x:3:3:sys:/dev:/bin/false \
        www-data:x:33:33:www-data:/var/www:/bin/false nobody:x:65534:65534:nobody:/home:/bin/false \
        > "$tree/etc/passwd"
    printf '%s\n' root:x:0: daemon:x:1: bin:x:2: sys:x:3: adm:x:4: tty:x:5: users:x:100: \
        nogroup:x:65534: > "$tree/etc/group"
    guest_script > "$tree/work.sh"
    printf '%s\n' '#!/bin/busybox sh' '/bin/busybox mount -t proc proc /proc' \
        '/bin/busybox sh /work.sh' '/bin/busybox reboot -f' > "$tree/init"
    chmod +x "$tree/init" "$tree/work.sh"
    (cd "$tree" && find . | cpio -o -H newc --quiet > "$work/guest.cpio")
    HULL_LAB_ROOT_CACHE="${HULL_LAB_ROOT_CACHE:-always}" \
        "$root/tests/lab/lab.sh" --timeout $((300 + rounds * 600)) --share "$work" -- "$0" "$rounds" "$work"
    # Medians per level, file system and step; the L2 levels also as ratios to l1.
    awk '$1 == "R" { k = $3 " " $4; v[$2, k] = v[$2, k] " " $5; keys[k] = 1 }
        function median(s,   a, n, i, j, t) {
            n = split(s, a, " "); if (n == 0) return ""
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
            return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        END {
            printf "%-30s %8s %16s %16s\n", "median seconds (ratio to l1)", "l1", "qemu", "hull-vmm"
            for (k in keys) {
                l = median(v["l1", k]); q = median(v["qemu", k]); h = median(v["hull-vmm", k])
                printf "%-30s %8.2f %8.2f (%4.2fx) %8.2f (%4.2fx)\n", k, l, q, (l > 0 ? q / l : 0), h, (l > 0 ? h / l : 0)
            }
        }' "$work/result.txt" | { read -r head; echo "$head"; sort; }
    exit 0
fi

work="${2:?the work directory}"
out="$work/result.txt"; : > "$out"
cmdline="console=ttyS0 reboot=t panic=-1 quiet rdinit=/init"
echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled
mkdir -p /tmp/l1 && cp -a "$work/root/." /tmp/l1/ && mount -t proc proc /tmp/l1/proc
for r in $(seq "$rounds"); do
    echo "round $r of $rounds"
    WHERE=l1 chroot /tmp/l1 /bin/busybox sh /work.sh 2>&1 | grep '^R ' >> "$out" || true
    timeout 900 qemu-system-x86_64 -M microvm -enable-kvm -cpu host -m 256 -smp 1 -nodefaults \
        -no-user-config -display none -serial stdio -no-reboot -kernel "$HULL_KERNEL" \
        -initrd "$work/guest.cpio" -append "$cmdline WHERE=qemu" 2>&1 | tr -d '\r' | grep '^R ' >> "$out" || true
    timeout 900 "$root/target/release/hull-vmm" --kernel "$HULL_KERNEL" --initrd "$work/guest.cpio" \
        --memory 256 --vcpus 1 --cmdline "$cmdline WHERE=hull-vmm" 2>&1 | tr -d '\r' | grep '^R ' >> "$out" || true
done
