"""xHCI capability registers (xHCI 1.2, 5.3) and the extended capability list (7), with each
Supported Protocol capability's revision, name string and port range."""

from __future__ import annotations

from typing import Any

from harness.fingerprint.binary import hx
from harness.fingerprint.registers.files import Files

CAPS = {0x04: "HCSPARAMS1", 0x08: "HCSPARAMS2", 0x0C: "HCSPARAMS3", 0x10: "HCCPARAMS1", 0x14: "DBOFF",
        0x18: "RTSOFF", 0x1C: "HCCPARAMS2"}
EXT_NAMES = {1: "USB Legacy Support", 2: "Supported Protocol", 3: "Extended Power Management",
             4: "I/O Virtualization", 5: "Message Interrupt", 6: "Local Memory", 10: "USB Debug Capability",
             17: "Extended Message Interrupt"}


def decode(files: Files) -> dict[str, Any]:
    regs = files.reads("bar0")
    cap0 = regs.get(0, 0)
    out: dict[str, Any] = {"label": "xHCI", "CAPLENGTH": hx(cap0 & 0xFF, 2), "HCIVERSION": hx(cap0 >> 16, 4)}
    for offset, name in CAPS.items():
        out[name] = hx(regs.get(offset, 0), 8)
    p1, p2, p3 = regs.get(0x04, 0), regs.get(0x08, 0), regs.get(0x0C, 0)
    out["HCSPARAMS1.fields"] = {"MaxSlots": p1 & 0xFF, "MaxIntrs": p1 >> 8 & 0x7FF, "MaxPorts": p1 >> 24}
    out["HCSPARAMS2.fields"] = {"IST": p2 & 0xF, "ERST_Max": p2 >> 4 & 0xF,
                                "MaxScratchpadBufs": (p2 >> 21 & 0x1F) << 5 | p2 >> 27}
    out["HCSPARAMS3.fields"] = {"U1_Device_Exit_Latency": p3 & 0xFF, "U2_Device_Exit_Latency": p3 >> 16}
    h1 = regs.get(0x10, 0)
    out["HCCPARAMS1.fields"] = {"AC64": h1 & 1, "BNC": h1 >> 1 & 1, "CSZ": h1 >> 2 & 1, "PPC": h1 >> 3 & 1,
                                "PIND": h1 >> 4 & 1, "LHRC": h1 >> 5 & 1, "LTC": h1 >> 6 & 1, "NSS": h1 >> 7 & 1,
                                "PAE": h1 >> 8 & 1, "SPC": h1 >> 9 & 1, "SEC": h1 >> 10 & 1, "CFC": h1 >> 11 & 1,
                                "MaxPSASize": h1 >> 12 & 0xF, "xECP": h1 >> 16}
    ext = []
    pos = (h1 >> 16) << 2
    seen = set()
    while pos and pos in regs and pos not in seen:
        seen.add(pos)
        head = regs[pos]
        cap_id = head & 0xFF
        item: dict[str, Any] = {"id": cap_id, "name": EXT_NAMES.get(cap_id, f"capability {cap_id}"), "offset": hx(pos)}
        if cap_id == 2 and pos + 8 in regs:
            name = regs[pos + 4].to_bytes(4, "little").decode("ascii", errors="backslashreplace")
            ports = regs[pos + 8]
            item.update({"revision": f"{head >> 24:x}.{head >> 16 & 0xFF:02x}", "name_string": name,
                         "compatible_port_offset": ports & 0xFF, "compatible_port_count": ports >> 8 & 0xFF,
                         "protocol_defined": hx(ports >> 16 & 0xFFF, 3), "psic": ports >> 28,
                         "protocol_slot_type": regs.get(pos + 12, 0) & 0x1F})
        ext.append(item)
        step = (head >> 8 & 0xFF) << 2
        pos = pos + step if step else 0
    out["extended_capabilities"] = ext
    return out
