#!/usr/bin/env python3
"""Writes the committed seed corpora of Hull's three fuzz crates, <crate>/fuzz/seeds/<target>/:
- guest-agent: OCI specs as containerd writes them (mounts, namespaces, resources, a seccomp
  profile with argument rules) for oci_spec, and every request type's protobuf, the first byte
  picking the type, for agent_requests;
- shim: valid agent replies as ttrpc frames for every call agent_replies makes, an error status,
  and guest output (console lines with the ready marker, CONNECT answers, OOM event sequences)
  for guest_output;
- vmm: well-formed starts for the device targets: a full virtio-mmio activation, a reset
  mid-activation, a virtio-blk read, a vsock handshake in both directions, virtio-net frames
  both ways.
Usage: scripts/fuzz_seeds.py [agent|shim|vmm]... (all three by default); run from anywhere,
rerun after changing it."""
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Protobuf and ttrpc framing (agent and shim targets).


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, value):
    """One protobuf field: ints and bools as varints, floats as fixed64, bytes/str length-delimited."""
    if isinstance(value, (bool, int)):
        return varint(num << 3) + varint(int(value))
    if isinstance(value, float):
        return varint(num << 3 | 1) + struct.pack("<d", value)
    if isinstance(value, str):
        value = value.encode()
    return varint(num << 3 | 2) + varint(len(value)) + value


def msg(*fields):
    return b"".join(field(n, v) for n, v in fields)


def frame(body, stream=1, kind=2, flags=0):
    """A ttrpc frame: length, stream id, type (2 = response), flags, body."""
    return struct.pack(">IIBB", len(body), stream, kind, flags) + body


def response(payload=None, status=None):
    fields = []
    if status is not None:
        fields.append((1, msg((1, status[0]), (2, status[1]))))
    if payload is not None:
        fields.append((2, payload))
    return frame(msg(*fields))


def write(out, target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# Guest memory layouts (vmm targets).


def put(buf, at, data):
    if len(buf) < at + len(data):
        buf.extend(b"\0" * (at + len(data) - len(buf)))
    buf[at:at + len(data)] = data


def desc(addr, length, flags, nxt):
    return struct.pack("<QIHH", addr, length, flags, nxt)


NEXT, WRITE = 1, 2


def blk_request(mem, qbase):
    """One virtio-blk read of sector 0 on the queue whose rings start at qbase."""
    put(mem, qbase, desc(0x1300, 16, NEXT, 1) + desc(0x1400, 512, NEXT | WRITE, 2)
        + desc(0x1600, 1, WRITE, 0))
    put(mem, qbase + 0x100, struct.pack("<HHH", 0, 1, 0))
    put(mem, 0x1300, struct.pack("<IIQ", 0, 0, 0))


def vsock_hdr(src_cid, dst_cid, src_port, dst_port, length, op, buf_alloc=65536):
    return struct.pack("<QQIIIHHIII", src_cid, dst_cid, src_port, dst_port, length, 1, op, 0,
                       buf_alloc, 0)


def mmio_ops(ops):
    return b"".join(struct.pack("<BBI", kind, reg // 4, value) for kind, reg, value in ops)


W, R, PROCESS = 0, 1, 5


def negotiate():
    return [(W, 0x70, 1), (W, 0x70, 3), (W, 0x24, 1), (W, 0x20, 1), (W, 0x70, 0xb),
            (R, 0x70, 0)]


def queue(idx, base):
    return [(W, 0x30, idx), (W, 0x38, 16), (W, 0x80, base), (W, 0x90, base + 0x100),
            (W, 0xa0, base + 0x200), (W, 0x44, 1)]


def mmio_seed(device, ops, memory_setup=None):
    mem = bytearray([device]) + mmio_ops(ops)
    assert len(mem) < 0x1000
    if memory_setup:
        memory_setup(mem)
    return bytes(mem)


def agent_seeds(out):
    """guest-agent/fuzz: oci_spec and agent_requests."""
    process = {
        "terminal": False,
        "user": {"uid": 0, "gid": 0, "additionalGids": [10]},
        "args": ["/bin/sh", "-c", "echo hi"],
        "env": ["PATH=/usr/bin:/bin", "TERM=xterm"],
        "cwd": "/",
        "capabilities": {
            "bounding": ["CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_KILL"],
            "effective": ["CAP_CHOWN", "CAP_KILL"],
            "permitted": ["CAP_CHOWN", "CAP_KILL"],
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    }
    spec = {
        "ociVersion": "1.1.0",
        "process": process,
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "pod",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/etc/hosts", "type": "bind", "source": "/run/hull/shared/hosts", "options": ["rbind", "rprivate", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid"]},
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                           {"type": "network", "path": "/run/hull/netns/pod"}],
            "resources": {
                "memory": {"limit": 268435456, "swap": 536870912, "reservation": 1048576},
                "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
                "pids": {"limit": 100},
                "blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]},
                "unified": {"memory.high": "200000000", "io.weight": "default 100"},
            },
            "seccomp": {
                "defaultAction": "SCMP_ACT_ERRNO",
                "defaultErrnoRet": 1,
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [
                    {"names": ["read", "write", "exit_group", "openat"], "action": "SCMP_ACT_ALLOW"},
                    {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                     "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
                    {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                     "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                    {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
                     "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"},
                              {"index": 1, "value": 3, "op": "SCMP_CMP_GE"}]},
                    {"names": ["kill"], "action": "SCMP_ACT_KILL_PROCESS",
                     "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_LT"}]},
                ],
            },
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/sys"],
        },
    }
    spec_json = json.dumps(spec).encode()
    minimal = json.dumps({"ociVersion": "1.1.0", "process": {"args": ["/pause"], "cwd": "/",
                          "user": {"uid": 0, "gid": 0}}, "root": {"path": "rootfs"}}).encode()
    write(out, "oci_spec", "containerd", spec_json)
    write(out, "oci_spec", "minimal", minimal)

    stdio = msg((1, msg((1, 10000), (3, b"\x01" * 32))), (2, msg((1, 10001), (3, b"\x02" * 32))))
    net = msg((1, msg((1, "eth0"), (2, "02:00:00:00:00:05"), (3, 1500),
                      (4, msg((1, "10.88.0.5"), (2, 16))),
                      (5, msg((2, "10.88.0.1"))),
                      (5, msg((1, msg((1, "10.0.0.0"), (2, 8))), (2, "10.88.0.1"))))))
    requests = {
        0: ("create_sandbox", msg((1, "pod-1"), (2, "pod"), (5, "hullshare"), (8, net))),
        1: ("create_container", msg((1, "c1"), (2, spec_json), (3, "/run/hull/shared/c1/rootfs"), (4, stdio))),
        2: ("exec_process", msg((1, "c1"), (2, "e1"), (3, json.dumps(process).encode()), (4, stdio))),
        3: ("signal_process", msg((1, "c1"), (2, "e1"), (3, 15), (4, True))),
        4: ("wait_process", msg((1, "c1"), (2, "e1"))),
        5: ("resize_pty", msg((1, "c1"), (3, 24), (4, 80))),
        6: ("close_stdin", msg((1, "c1"))),
        7: ("start_container", msg((1, "c1"))),
        8: ("list_pids", msg((1, "c1"))),
        9: ("stats", msg((1, "c1"))),
        10: ("pause_container", msg((1, "c1"))),
        11: ("resume_container", msg((1, "c1"))),
        12: ("remove_container", msg((1, "c1"))),
        13: ("version", msg((1, "hull.agent.v1"))),
        14: ("update_container", msg((1, "c1"), (2, json.dumps(
            {"memory": {"limit": 201326592}, "cpu": {"quota": 30000, "period": 100000},
             "unified": {"memory.high": "150000000"}}).encode()))),
    }
    for kind, (name, body) in requests.items():
        write(out, "agent_requests", name, bytes([kind]) + body)


def shim_seeds(out):
    """shim/fuzz: agent_replies and guest_output."""
    replies = {
        0: ("version", msg((1, "hull.agent.v1"), (2, "0.1.0"), (3, 1.5))),
        1: ("create_container", msg((1, 42))),
        2: ("exec_process", msg((1, 43))),
        3: ("wait_process", msg((1, 137), (2, 1_700_000_000_000_000_000))),
        4: ("list_pids", b"\x0a\x03\x01\x02\x03"),  # pids 1, 2, 3 (packed)
        5: ("stats", msg((1, msg((1, 3), (2, 100))), (2, msg((1, 12345))),
                         (3, msg((1, 1 << 20), (2, 1 << 30), (5, msg((1, "anon"), (2, 4096))))),
                         (4, msg((1, msg((1, 8), (2, 0), (3, 512))))), (5, msg((4, 1), (5, 1))))),
        6: ("oom_event", msg((1, "c1"))),
        7: ("remove_container", b""),
    }
    for call, (name, payload) in replies.items():
        write(out, "agent_replies", name, bytes([call]) + response(payload))
    write(out, "agent_replies", "not_found", bytes([3]) + response(status=(5, "container c9 not found")))
    # A frame claiming 4 GiB, then a hang-up (found by agent_replies: ttrpc discards it slowly).
    write(out, "agent_replies", "oversized_frame", bytes([5]) + struct.pack(">IIBB", 0xFFFFFFFF, 1, 2, 0))
    write(out, "agent_replies", "two_frames", bytes([4]) + frame(b"\x12\x00", stream=3) + response(b"\x0a\x01\x07"))

    write(out, "guest_output", "console", b"\x00" + b"\x02\x05[    0.5] booting\r\nHULL_AGENT_READY uptime=1.2 listen=vsock:1024\n\x1b[2Jtail")
    write(out, "guest_output", "connect_ok", b"\x01OK 1073741824\nguest bytes")
    write(out, "guest_output", "connect_refused", b"\x01NO\n")
    write(out, "guest_output", "oom_events", b"\x02" + bytes([0x10, 1, 0, 0, 0x10, 1, 1, 0, 0, 5, 0, 0, 2, 0, 0, 0, 3, 0, 60, 0]))


def vmm_seeds(out):
    """vmm/fuzz: mmio_sequence, blk_queue, vsock_queue, net_queue and vsock_muxer."""
    seeds = {
        "mmio_sequence/blk_activate_and_read": mmio_seed(
            0, negotiate() + queue(0, 0x1000) + [(W, 0x70, 0xf), (W, 0x50, 0), (PROCESS, 0, 0),
                                                 (R, 0x60, 0), (W, 0x64, 1)],
            lambda m: blk_request(m, 0x1000)),
        "mmio_sequence/blk_reset_mid_activation": mmio_seed(
            0, negotiate() + queue(0, 0x1000)[:3] + [(W, 0x70, 0)] + negotiate() + queue(0, 0x1000)
            + [(W, 0x70, 0xf), (PROCESS, 0, 0), (W, 0x70, 0), (PROCESS, 0, 0)],
            lambda m: blk_request(m, 0x1000)),
        "mmio_sequence/vsock_activate_then_reset": mmio_seed(
            1, negotiate() + queue(0, 0x1000) + queue(1, 0x2000) + queue(2, 0x3000)
            + [(W, 0x70, 0xf), (W, 0x50, 1), (PROCESS, 0, 1), (W, 0x70, 0), (W, 0x50, 1)]),
    }

    blk = bytearray()
    blk_request(blk, 0x1000)
    seeds["blk_queue/read_sector_0"] = bytes(blk)

    vq = bytearray()
    put(vq, 0x2000, desc(0x1400, 44, 0, 0))
    put(vq, 0x2100, struct.pack("<HHH", 0, 1, 0))
    put(vq, 0x1400, vsock_hdr(3, 2, 4000, 1024, 0, 1))
    put(vq, 0x1000, desc(0x1500, 0x100, WRITE, 0))
    put(vq, 0x1100, struct.pack("<HHH", 0, 1, 0))
    seeds["vsock_queue/guest_request"] = bytes(vq)

    def net_seed(sel, frame_len):
        """net_queue: a guest TX frame (header + 60 bytes in two descriptors) and two RX buffers,
        with `sel` (features, host frame count) and the host frames' length in bytes 0-2."""
        m = bytearray(struct.pack("<BH", sel, frame_len))
        put(m, 0x2000, desc(0x1400, 12, NEXT, 1) + desc(0x1410, 60, 0, 0))
        put(m, 0x2100, struct.pack("<HHH", 0, 1, 0))
        put(m, 0x1000, desc(0x3000, 1526, WRITE, 0) + desc(0x3800, 1526, WRITE, 0))
        put(m, 0x1100, struct.pack("<HHHH", 0, 2, 0, 1))
        return bytes(m)

    seeds["net_queue/tx_and_rx_mergeable"] = net_seed(1 | 2 | (2 << 2), 2000)
    seeds["net_queue/rx_single_buffer"] = net_seed(1 << 2, 600)

    def guest_pkt(src_port_sel, dst, op, payload=b"", buf_alloc=65536):
        """A vsock_muxer guest packet op: 24 bytes of fields, then the payload."""
        f = bytearray(24)
        f[0] = src_port_sel
        if dst is None:
            f[1] = 0
        else:
            f[1] = 0x80
            f[2:6] = struct.pack("<I", dst)
        f[11] = op
        f[13:17] = struct.pack("<I", buf_alloc)
        f[23] = len(payload)
        return bytes([0]) + bytes(f) + payload

    seeds["vsock_muxer/host_connects"] = (
        bytes([1, 0, 5, 6, 16]) + guest_pkt(0, 1 << 30, 2) + bytes([3, 4, 5, 6, 16])
        + guest_pkt(0, 1 << 30, 5, b"pong") + bytes([4, 0, 5, 6, 16]))
    seeds["vsock_muxer/guest_dials_zero_credit"] = (
        guest_pkt(1, None, 1, buf_alloc=0) + bytes([6, 16, 2, 3, 8, 5, 6, 16, 4, 1, 5, 6, 16])
        + guest_pkt(1, None, 3))
    for path, data in seeds.items():
        write(out, os.path.dirname(path), os.path.basename(path), data)


CRATES = {
    "agent": ("guest-agent/fuzz/seeds", agent_seeds),
    "shim": ("shim/fuzz/seeds", shim_seeds),
    "vmm": ("vmm/fuzz/seeds", vmm_seeds),
}

if __name__ == "__main__":
    names = sys.argv[1:] or list(CRATES)
    for name in names:
        if name not in CRATES:
            sys.exit(f"fuzz_seeds.py: unknown crate {name!r}; one of {', '.join(CRATES)}")
        seeds_dir, make = CRATES[name]
        make(os.path.join(ROOT, seeds_dir))
