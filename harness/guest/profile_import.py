"""`qabi profile import`: a profile built from a VM the user already runs.

    toml_text, notes = import_profile(text, "win11.xml")

`text` is a libvirt domain XML (`virsh dumpxml NAME`: harness/guest/import_libvirt.py) or a QEMU
command line (libvirt's per-domain log, `ps`, Proxmox's `qm showcmd`: harness/guest/import_argv.py).
Both fill one `Draft`: the machine type (pinned), CPU, topology, memory, UUID, SMBIOS strings,
firmware, TPM, Hyper-V, clock, and every device at its place in the topology, each checked against
the driver allow-list (harness/guest/drivers.py) as the profile loader checks it. Host-only parts
(graphics servers, chardev and network backends, host paths, iothreads, USB redirection) are
dropped with one note each; passthrough and host-dependent CPUs are refused (one line, exit 2).
The result is the profile's TOML, loaded back through the strict profile loader before it is
returned, so an import never writes a profile that `qabi check` would refuse.

The input is hostile: bounded in bytes, XML parsed with DTDs and entities refused.
"""

from __future__ import annotations

from pathlib import Path

from harness.cache import read_input as read_bytes_input
from harness.errors import QabiError
from harness.guest.draft import MAX_INPUT, to_toml
from harness.guest.profile import parse_profile


def import_profile(text: str, where: str) -> tuple[str, list[str]]:
    """The profile TOML for the VM in `text` (a libvirt domain XML or a QEMU command line; `where`
    names it in messages), and the notes for what was dropped. Loaded back through the profile
    loader: what is returned is a valid strict profile."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_INPUT:
        raise QabiError(f"{where}: not a domain XML or a QEMU command line (over {MAX_INPUT >> 20} MiB)")
    try:
        if text.lstrip().startswith("<"):
            from harness.guest.import_libvirt import draft_from_libvirt

            draft = draft_from_libvirt(text, where)
        else:
            from harness.guest.import_argv import draft_from_argv

            draft = draft_from_argv(text, where)
        data = draft.profile_data()
        toml = to_toml(data, draft.notes)
        parse_profile(toml, Path(where))
    except QabiError as exc:
        if where in str(exc):
            raise
        raise QabiError(f"{where}: {exc}") from None
    return toml, list(draft.notes)


def read_input(path: str) -> tuple[str, str]:
    """The text of FILE (a regular file, through the one bounded reader) or of stdin (`-`), bounded;
    (text, name for messages)."""
    import sys

    if path == "-":
        raw = sys.stdin.buffer.read(MAX_INPUT + 1)
        where = "<stdin>"
    else:
        raw = read_bytes_input(Path(path), "a domain XML or a QEMU command line", MAX_INPUT)
        where = Path(path).name
    if len(raw) > MAX_INPUT:
        raise QabiError(f"{where}: not a domain XML or a QEMU command line (over {MAX_INPUT >> 20} MiB)")
    try:
        return raw.decode("utf-8"), where
    except UnicodeDecodeError as exc:
        raise QabiError(f"{where}: not UTF-8 text (byte {exc.start})") from None
