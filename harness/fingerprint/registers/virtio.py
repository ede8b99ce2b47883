"""virtio (modern and transitional): feature bits by name, queues, and the device-specific
configuration decoded per device type with the virtio specification's field names (1.3, 5.x).

Files (harness/transport/firmware/registers.py): virtio-common, virtio-features, virtio-queues
and virtio-device for a modern device; virtio-legacy and virtio-device for a legacy-only one.
A device-specific field is decoded only when the feature that makes it valid is offered (the
specification's rule; beyond the device's configuration QEMU reads all ones).
"""

from __future__ import annotations

import struct
from typing import Any

from harness.errors import DecodeError
from harness.fingerprint.binary import Blob, hx
from harness.fingerprint.registers.files import Files

TYPES = {1: "network", 2: "block", 3: "console", 4: "entropy", 5: "memory balloon", 8: "SCSI host",
         9: "9P transport", 16: "GPU", 18: "input", 19: "socket", 26: "file system", 41: "sound"}
LEGACY_TYPES = {0x1000: 1, 0x1001: 2, 0x1002: 5, 0x1003: 3, 0x1004: 8, 0x1005: 4, 0x1009: 9}
COMMON_FEATURES = {24: "VIRTIO_F_NOTIFY_ON_EMPTY", 27: "VIRTIO_F_ANY_LAYOUT", 28: "VIRTIO_F_INDIRECT_DESC",
                   29: "VIRTIO_F_EVENT_IDX", 30: "VIRTIO_F_BAD_FEATURE", 32: "VIRTIO_F_VERSION_1",
                   33: "VIRTIO_F_ACCESS_PLATFORM", 34: "VIRTIO_F_RING_PACKED", 35: "VIRTIO_F_IN_ORDER",
                   36: "VIRTIO_F_ORDER_PLATFORM", 37: "VIRTIO_F_SR_IOV", 38: "VIRTIO_F_NOTIFICATION_DATA",
                   39: "VIRTIO_F_NOTIF_CONFIG_DATA", 40: "VIRTIO_F_RING_RESET", 41: "VIRTIO_F_ADMIN_VQ"}
DEVICE_FEATURES: dict[int, dict[int, str]] = {
    1: {0: "CSUM", 1: "GUEST_CSUM", 2: "CTRL_GUEST_OFFLOADS", 3: "MTU", 5: "MAC", 6: "GSO", 7: "GUEST_TSO4",
        8: "GUEST_TSO6", 9: "GUEST_ECN", 10: "GUEST_UFO", 11: "HOST_TSO4", 12: "HOST_TSO6", 13: "HOST_ECN",
        14: "HOST_UFO", 15: "MRG_RXBUF", 16: "STATUS", 17: "CTRL_VQ", 18: "CTRL_RX", 19: "CTRL_VLAN",
        20: "CTRL_RX_EXTRA", 21: "GUEST_ANNOUNCE", 22: "MQ", 23: "CTRL_MAC_ADDR", 52: "VQ_NOTF_COAL",
        53: "NOTF_COAL", 54: "GUEST_USO4", 55: "GUEST_USO6", 56: "HOST_USO", 57: "HASH_REPORT",
        59: "GUEST_HDRLEN", 60: "RSS", 61: "RSC_EXT", 62: "STANDBY", 63: "SPEED_DUPLEX"},
    2: {0: "BARRIER", 1: "SIZE_MAX", 2: "SEG_MAX", 4: "GEOMETRY", 5: "RO", 6: "BLK_SIZE", 7: "SCSI",
        9: "FLUSH", 10: "TOPOLOGY", 11: "CONFIG_WCE", 12: "MQ", 13: "DISCARD", 14: "WRITE_ZEROES",
        15: "LIFETIME", 16: "SECURE_ERASE", 17: "ZONED"},
    3: {0: "SIZE", 1: "MULTIPORT", 2: "EMERG_WRITE"},
    5: {0: "MUST_TELL_HOST", 1: "STATS_VQ", 2: "DEFLATE_ON_OOM", 3: "FREE_PAGE_HINT", 4: "PAGE_POISON",
        5: "REPORTING"},
    8: {0: "INOUT", 1: "HOTPLUG", 2: "CHANGE", 3: "T10_PI"},
    9: {0: "MOUNT_TAG"},
    16: {0: "VIRGL", 1: "EDID", 2: "RESOURCE_UUID", 3: "RESOURCE_BLOB", 4: "CONTEXT_INIT"},
}
PREFIX = {1: "VIRTIO_NET_F_", 2: "VIRTIO_BLK_F_", 3: "VIRTIO_CONSOLE_F_", 5: "VIRTIO_BALLOON_F_",
          8: "VIRTIO_SCSI_F_", 9: "VIRTIO_9P_", 16: "VIRTIO_GPU_F_"}
# device type -> (field, offset, size, the feature bit that makes it valid or None)
CONFIG: dict[int, tuple[tuple[str, int, int, int | None], ...]] = {
    1: (("mac", 0, 6, 5), ("status", 6, 2, 16), ("max_virtqueue_pairs", 8, 2, 22), ("mtu", 10, 2, 3),
        ("speed", 12, 4, 63), ("duplex", 16, 1, 63), ("rss_max_key_size", 17, 1, 60),
        ("rss_max_indirection_table_length", 18, 2, 60), ("supported_hash_types", 20, 4, 60)),
    2: (("capacity", 0, 8, None), ("size_max", 8, 4, 1), ("seg_max", 12, 4, 2),
        ("geometry.cylinders", 16, 2, 4), ("geometry.heads", 18, 1, 4), ("geometry.sectors", 19, 1, 4),
        ("blk_size", 20, 4, 6), ("topology.physical_block_exp", 24, 1, 10),
        ("topology.alignment_offset", 25, 1, 10), ("topology.min_io_size", 26, 2, 10),
        ("topology.opt_io_size", 28, 4, 10), ("writeback", 32, 1, 11), ("num_queues", 34, 2, 12),
        ("max_discard_sectors", 36, 4, 13), ("max_discard_seg", 40, 4, 13),
        ("discard_sector_alignment", 44, 4, 13), ("max_write_zeroes_sectors", 48, 4, 14),
        ("max_write_zeroes_seg", 52, 4, 14), ("write_zeroes_may_unmap", 56, 1, 14),
        ("max_secure_erase_sectors", 60, 4, 16), ("max_secure_erase_seg", 64, 4, 16),
        ("secure_erase_sector_alignment", 68, 4, 16)),
    3: (("cols", 0, 2, 0), ("rows", 2, 2, 0), ("max_nr_ports", 4, 4, 1)),
    5: (("num_pages", 0, 4, None), ("actual", 4, 4, None), ("poison_val", 12, 4, 4)),
    8: (("num_queues", 0, 4, None), ("seg_max", 4, 4, None), ("max_sectors", 8, 4, None),
        ("cmd_per_lun", 12, 4, None), ("event_info_size", 16, 4, None), ("sense_size", 20, 4, None),
        ("cdb_size", 24, 4, None), ("max_channel", 28, 2, None), ("max_target", 30, 2, None),
        ("max_lun", 32, 4, None)),
    16: (("num_scanouts", 8, 4, None), ("num_capsets", 12, 4, None)),
}
DRIVER_STATE = {
    "device_status": "driver state: what the firmware's driver wrote (SeaBIOS drives virtio-blk/scsi)",
    "driver_feature": "driver state: the features the firmware's driver accepted",
    "msix_config": "driver state: the vector the firmware's driver assigned",
    "config_generation": "changes whenever the device changes its configuration",
    "queue_enable": "driver state: queues the firmware's driver enabled",
    "isr": "not read: the ISR status register is cleared by a read",
}


def runs(values: list[int]) -> str:
    """Per-queue values as one line, repeats folded: [256, 256, 64] -> "256 ×2, 64" (a changed size
    is one drift per device, not one per queue of a 64-port console)."""
    out: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j < len(values) and values[j] == values[i]:
            j += 1
        out.append(f"{values[i]}" + (f" ×{j - i}" if j - i > 1 else ""))
        i = j
    return ", ".join(out)


def feature_names(bits: int, device_type: int) -> dict[str, int]:
    """{name: bit} of every offered feature (`VIRTIO_F_*`, the device's `VIRTIO_<DEV>_F_*`, else `bit N`)."""
    out = {}
    device = DEVICE_FEATURES.get(device_type, {})
    for bit in range(64):
        if bits >> bit & 1:
            if bit in device and not 24 <= bit <= 41:
                name = PREFIX.get(device_type, "VIRTIO_DEV_F_") + device[bit]
            elif bit in COMMON_FEATURES:
                name = COMMON_FEATURES[bit]
            elif bit in device:
                name = PREFIX.get(device_type, "VIRTIO_DEV_F_") + device[bit]
            else:
                name = f"bit {bit}"
            out[name] = bit
    return out


def device_config(data: Blob, device_type: int, features: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, offset, size, feature in CONFIG.get(device_type, ()):
        if feature is not None and not features >> feature & 1:
            continue
        if offset + size > len(data):
            continue
        raw = data.bytes(offset, size)
        value: Any = ":".join(f"{b:02x}" for b in raw) if name == "mac" else int.from_bytes(raw, "little")
        group, _, leaf = name.rpartition(".")
        (out.setdefault(group, {}) if group else out)[leaf] = value
    return out


def decode(files: Files) -> dict[str, Any]:
    config = files.config()
    if len(config) < 0x30:
        raise DecodeError(f"{files.where}", None, "the function's config space is too short")
    device_id, subsystem = struct.unpack_from("<H", config, 2)[0], struct.unpack_from("<H", config, 0x2E)[0]
    device_type = device_id - 0x1040 if device_id >= 0x1040 else LEGACY_TYPES.get(device_id, subsystem)
    entry: dict[str, Any] = {"label": f"virtio {TYPES.get(device_type, f'device type {device_type}')}",
                             "device_type": device_type}
    if files.has("virtio-features"):
        common = Blob(f"{files.where}/virtio-common", files.data("virtio-common"))
        lo, hi = struct.unpack("<II", Blob(f"{files.where}/virtio-features", files.data("virtio-features")).bytes(0, 8))
        features = hi << 32 | lo
        queues = files.data("virtio-queues")
        if len(queues) % 4:
            raise DecodeError(f"{files.where}/virtio-queues", None, "not a whole number of queues")
        entry["transport"] = "modern"
        entry["num_queues"] = common.u16(0x12)
        pairs = list(struct.iter_unpack("<HH", queues))
        entry["queue_sizes"] = runs([size for size, _off in pairs])
        entry["queue_notify_offs"] = runs([off for _size, off in pairs])
    else:
        legacy = files.data("virtio-legacy")
        if len(legacy) < 4 or len(legacy) % 2:
            raise DecodeError(f"{files.where}/virtio-legacy", None, f"{len(legacy)} bytes")
        features = struct.unpack_from("<I", legacy)[0]
        entry["transport"] = "legacy"
        sizes = [s for (s,) in struct.iter_unpack("<H", legacy[4:])]
        entry["num_queues"] = len(sizes)
        entry["queue_sizes"] = runs(sizes)
    entry["device_feature"] = hx(features, 16)
    entry["features"] = feature_names(features, device_type)
    device = files.data("virtio-device") if files.has("virtio-device") else b""
    entry["config"] = device_config(Blob(f"{files.where}/virtio-device", device), device_type, features)
    entry["not_compared"] = dict(DRIVER_STATE)
    return entry
