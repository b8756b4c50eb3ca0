#!/usr/bin/env python3
"""Writes the committed seed corpora of the shim's fuzz targets (shim/fuzz/seeds/<target>):
valid agent replies as ttrpc frames for every call agent_replies makes, an error
status, and guest output (console lines with the ready marker, CONNECT answers,
OOM event sequences) for guest_output. Run from anywhere; rerun after changing it."""
import os
import struct

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
    """One protobuf field: ints as varints, bytes/str length-delimited."""
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
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


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


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
    write("agent_replies", name, bytes([call]) + response(payload))
write("agent_replies", "not_found", bytes([3]) + response(status=(5, "container c9 not found")))
# A frame claiming 4 GiB, then a hang-up (found by agent_replies: ttrpc discards it slowly).
write("agent_replies", "oversized_frame", bytes([5]) + struct.pack(">IIBB", 0xFFFFFFFF, 1, 2, 0))
write("agent_replies", "two_frames", bytes([4]) + frame(b"\x12\x00", stream=3) + response(b"\x0a\x01\x07"))

write("guest_output", "console", b"\x00" + b"\x02\x05[    0.5] booting\r\nHULL_AGENT_READY uptime=1.2 listen=vsock:1024\n\x1b[2Jtail")
write("guest_output", "connect_ok", b"\x01OK 1073741824\nguest bytes")
write("guest_output", "connect_refused", b"\x01NO\n")
write("guest_output", "oom_events", b"\x02" + bytes([0x10, 1, 0, 0, 0x10, 1, 1, 0, 0, 5, 0, 0, 2, 0, 0, 0, 3, 0, 60, 0]))
