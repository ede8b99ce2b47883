"""Intel High Definition Audio controller global registers (HDA 1.0a, 3.3)."""

from __future__ import annotations

from typing import Any

from harness.fingerprint.registers.files import Files, named

REGS = {0x00: "GCAP", 0x02: "VMIN", 0x03: "VMAJ", 0x04: "OUTPAY", 0x06: "INPAY", 0x08: "GCTL", 0x0C: "WAKEEN",
        0x0E: "STATESTS", 0x10: "GSTS", 0x18: "OUTSTRMPAY", 0x1A: "INSTRMPAY", 0x20: "INTCTL", 0x4E: "CORBSIZE",
        0x5E: "RIRBSIZE"}
WIDTH = {0x00: 2, 0x02: 1, 0x03: 1, 0x04: 2, 0x06: 2, 0x0C: 2, 0x0E: 2, 0x10: 2, 0x18: 2, 0x1A: 2, 0x4E: 1, 0x5E: 1}
NOT_COMPARED = {"WALCLK": "not read: the wall clock counter counts by itself",
                "INTSTS": "not read: interrupt status (set by events)",
                "IRR": "keeps the last codec response after qabi's verbs (a driver resets the controller "
                       "before it uses it)"}
WIDGET_TYPES = {0: "audio output", 1: "audio input", 2: "audio mixer", 3: "audio selector", 4: "pin complex",
                5: "power widget", 6: "volume knob", 7: "beep generator", 15: "vendor defined"}
GROUP_TYPES = {1: "audio", 2: "modem"}
PARAMS = {0x00: "vendor_device_id", 0x02: "revision_id", 0x04: "subordinate_node_count", 0x05: "function_group_type",
          0x08: "audio_function_group_caps", 0x09: "audio_widget_caps", 0x0A: "supported_pcm", 0x0B: "stream_formats",
          0x0C: "pin_caps", 0x0D: "input_amp_caps", 0x0E: "connection_list_length", 0x0F: "power_states",
          0x12: "output_amp_caps"}
GET_PARAMETER, GET_SUBSYSTEM_ID, GET_CONFIG_DEFAULT = 0xF00, 0xF20, 0xF1C


def codecs(verbs: dict[int, int]) -> dict[str, Any]:
    """{codec address: {"vendor_id", "device_id", "revision_id", "nodes": {nid: {parameter: value}}}}
    from (verb word -> response) pairs (HDA 1.0a, 7.3.3 and 7.3.4)."""
    out: dict[str, Any] = {}
    for word, response in verbs.items():
        cad, nid, verb, payload = word >> 28, word >> 20 & 0x7F, word >> 8 & 0xFFF, word & 0xFF
        codec = out.setdefault(str(cad), {"nodes": {}})
        node = codec["nodes"].setdefault(f"0x{nid:02x}", {})
        if verb == GET_PARAMETER:
            name = PARAMS.get(payload, f"parameter 0x{payload:02x}")
            node[name] = f"0x{response:08x}"
            if payload == 0x09:
                node["type"] = WIDGET_TYPES.get(response >> 20 & 0xF, str(response >> 20 & 0xF))
            if payload == 0x05:
                node["type"] = GROUP_TYPES.get(response & 0xFF, f"function group {response & 0xFF}")
            if nid == 0 and payload == 0x00:
                codec["vendor_id"], codec["device_id"] = f"0x{response >> 16:04x}", f"0x{response & 0xFFFF:04x}"
        elif verb == GET_SUBSYSTEM_ID:
            node["subsystem_id"] = f"0x{response:08x}"
        elif verb == GET_CONFIG_DEFAULT:
            node["config_default"] = f"0x{response:08x}"
        else:
            node[f"verb 0x{verb:03x}/0x{payload:02x}"] = f"0x{response:08x}"
    return out


def decode(files: Files) -> dict[str, Any]:
    regs = files.reads("bar0")
    gcap = regs.get(0, 0)
    return {"label": "HD Audio controller", "registers": named(regs, REGS, WIDTH),
            "GCAP.fields": {"OSS": gcap >> 12 & 0xF, "ISS": gcap >> 8 & 0xF, "BSS": gcap >> 3 & 0x1F,
                            "NSDO": gcap >> 1 & 3, "64OK": gcap & 1},
            "version": f"{regs.get(3, 0)}.{regs.get(2, 0)}",
            "codecs": codecs(files.reads("codecs")) if files.has("codecs") else {},
            "not_compared": dict(NOT_COMPARED)}
