#!/usr/bin/env python3
"""Writes the committed seed corpora of the agent's fuzz targets
(guest-agent/fuzz/seeds/): OCI specs as containerd writes them (with mounts,
namespaces, resources, a seccomp profile with argument rules) for oci_spec, and
every request type's protobuf, the first byte picking the type, for
agent_requests. Run from anywhere; rerun after changing it."""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


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
    if isinstance(value, bool) or isinstance(value, int):
        return varint(num << 3) + varint(int(value))
    if isinstance(value, str):
        value = value.encode()
    return varint(num << 3 | 2) + varint(len(value)) + value


def msg(*fields):
    return b"".join(field(n, v) for n, v in fields)


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


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
write("oci_spec", "containerd", spec_json)
write("oci_spec", "minimal", minimal)

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
}
for kind, (name, body) in requests.items():
    write("agent_requests", name, bytes([kind]) + body)
