"""Firmware is the default transport of every front door; serial and ssh stay one option away, and
captures over different transports never share a cache entry."""

from __future__ import annotations

import pytest

from harness.capture import plan_capture
from harness.check import RunRequest
from harness.cli import build_parser
from harness.plan import DEFAULT_ACCESS, DEFAULT_TRANSPORT, SERIAL, GuestAccess
from harness.transport.base import transports


def test_default_is_firmware_everywhere():
    from harness.plugin import DEFAULTS

    assert DEFAULT_TRANSPORT == "firmware" and DEFAULT_ACCESS.transport == "firmware"
    assert RunRequest("a", "b").access.transport == "firmware"
    assert DEFAULTS["transport"] == "firmware"
    parser = build_parser()
    for argv in (["check", "--old", "a", "--new", "b"], ["record", "--qemu", "a", "--machine", "m"],
                 ["capture", "--qemu", "a", "--machine", "m", "--guest", "g", "-o", "x"]):
        assert parser.parse_args(argv).transport == "firmware", argv[0]
        for name in ("serial", "ssh"):
            assert parser.parse_args([*argv, "--transport", name]).transport == name


def test_help_lists_the_transport_table(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["check", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in transports()) and "default: firmware" in text


def test_cache_keys_differ_per_transport():
    from harness.capture import capture_inputs, capture_key
    from harness.guest.profile import load_profile
    from harness.qemu import resolve
    from harness.transport.firmware import payload_sha256

    build, profile = resolve("system"), load_profile("linux-virtio")
    keys = {t: capture_key(plan_capture(build, profile, "pc-q35-7.2", access=GuestAccess(transport=t)))
            for t in transports()}
    assert len(set(keys.values())) == len(keys), keys
    firmware = capture_inputs(plan_capture(build, profile, "pc-q35-7.2", access=DEFAULT_ACCESS))
    assert (firmware["transport"], firmware["image"]) == ("firmware", payload_sha256())   # the payload's bytes decide
    assert not DEFAULT_ACCESS.boots_reference_image and SERIAL.boots_reference_image
