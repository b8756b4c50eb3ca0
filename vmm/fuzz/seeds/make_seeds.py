#!/usr/bin/env python3
"""Writes the committed seed inputs of the hull-vmm fuzz targets (run from vmm/fuzz/seeds).
Each seed is a well-formed start the fuzzer mutates: a full virtio-mmio activation, a reset
mid-activation, a virtio-blk read, a vsock handshake in both directions, virtio-net frames both ways."""
import struct

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

for name, data in seeds.items():
    with open(name, "wb") as f:
        f.write(data)
