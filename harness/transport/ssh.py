"""SSH transport: boot QEMU with user-mode networking, log in with paramiko, run the probe, verify.

The guest keeps the profile's own NIC (only its user-mode backend gains a host forward from
127.0.0.1 to the guest's port 22) and the serial port (whose output becomes the console log), so
it sees the same hardware as over the serial transport. QEMU binds the forwarded port itself
(`hostfwd=tcp:127.0.0.1:0-:22`, port 0 = any free port) and reports it over QMP, so concurrent
runs can never race for a port.

The client is strict: the guest's host key must be one of the pinned keys (no auto-add, no
known_hosts lookup), login is by key only, and the probe's output goes through the same framed,
checksummed parser as the serial console's. Anything short of a complete, verified output is an
error, never a partial capture.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import logging
import re
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko

# paramiko's transport thread logs every failed attempt with a traceback; the retry loop below
# decides what is an error, and says it in one line
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False

from harness.cache import read_text
from harness.errors import CaptureError, QabiError
from harness.guest import REFERENCE_DIR, build_reference_image
from harness.guest.user_image import open_guest_image
from harness.qemu.process import spawn, wait_for
from harness.transport.base import Session, Setup, TransportResult, early_exit_error
from harness.transport.framing import parse
from harness.transport.platform import reference_boot

if TYPE_CHECKING:
    from harness.plan import CapturePlan

GUEST_PORT = 22
HOSTFWD = f"tcp:127.0.0.1:0-:{GUEST_PORT}"
MAX_OUTPUT = 64 << 20
MAX_STDERR = 64 << 10           # the probe's stderr is only for messages: its last 64 KiB are kept
CONNECT_ATTEMPT = 10.0          # seconds for one TCP connect + auth attempt
BANNER_FIRST = 2.0              # the first wait for sshd's banner; doubled after each silent attempt
SHUTDOWN_WAIT = 60.0            # a full distribution takes a while to power off under TCG
_FORWARD = re.compile(r"TCP\[HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1\s+(\d+)\s+\S+\s+" + str(GUEST_PORT) + r"\b")


@dataclass(frozen=True)
class SshLogin:
    """How to reach and use the guest's sshd."""

    user: str
    key: Path                             # private key file
    host_keys: tuple[str, ...]            # pinned public keys, "TYPE BASE64" (known_hosts lines also work)
    probe_env: tuple[tuple[str, str], ...] = ()
    shutdown: str = "poweroff"
    ready_marker: str | None = None       # a console line that means "sshd is up" (the reference guest's)

    @property
    def sudo(self) -> str:
        return "" if self.user == "root" else "sudo -n "


def _probe(plan: CapturePlan) -> bytes:
    return ((plan.reference or REFERENCE_DIR) / "probe.sh").read_bytes()


class SshTransport:
    """The reference guest in network mode, or the user's own image (`--guest-image`), probed over SSH."""

    name = "ssh"
    needs_nic = True

    def setup(self, plan: CapturePlan, workdir: Path, console_log: Path) -> Setup:
        access = plan.access
        console_log.parent.mkdir(parents=True, exist_ok=True)
        console_log.unlink(missing_ok=True)
        console = ("-chardev", f"file,id=qabicon,path={console_log}", "-serial", "chardev:qabicon")
        user_image = plan.user_image
        if user_image is not None:
            assert access.ssh_key is not None
            pinned = read_host_keys(access.ssh_host_keys) if access.ssh_host_keys else ()
            login = SshLogin(access.user, access.ssh_key, pinned, shutdown="poweroff")
            return Setup(args=console, hostfwd=HOSTFWD, boot_disk=(user_image.path, user_image.format),
                         image=user_image.as_json(), state=(login, _probe(plan), user_image))
        image = build_reference_image(plan.reference)
        kernel, cmdline = reference_boot(plan, image.kernel, image.cmdline_for(self.name))
        # the reference guest: its own pinned host key and the cache's client key
        login = SshLogin("root", image.client_key, (image.host_key,), probe_env=(("QABI_PROBE_BATCH", "1"),),
                         shutdown="poweroff -f", ready_marker="@@QABI-SSH-READY")
        return Setup(args=("-kernel", str(kernel), "-initrd", str(image.initramfs), "-append", cmdline,
                           *console),
                     hostfwd=HOSTFWD, image={"sha256": image.sha256, "cmdline": cmdline,
                                             "kernel": image.kernel_version},
                     state=(login, _probe(plan), None))

    def run(self, session: Session) -> TransportResult:
        login, probe, user_image = session.setup.state
        result = run(session.argv, session.env, session.workdir, session.console_log, session.timeout, login, probe)
        if user_image is not None and open_guest_image(user_image.path).sha256 != user_image.sha256:
            raise CaptureError(f"guest image {user_image.path} changed while it was captured")
        return result


# -- keys ---------------------------------------------------------------------------------------
def parse_public_key(line: str, origin: str = "host key") -> paramiko.PKey:
    """A public key from an OpenSSH line: 'TYPE BASE64 [comment]' or a known_hosts 'HOST TYPE BASE64'."""
    fields = line.split()
    for i in range(min(2, len(fields))):
        if i + 1 < len(fields) and re.fullmatch(r"(ssh|ecdsa|sk)-[A-Za-z0-9@.-]+", fields[i]):
            try:
                return paramiko.PKey.from_type_string(fields[i], base64.b64decode(fields[i + 1], validate=True))
            except (binascii.Error, ValueError, paramiko.SSHException) as exc:
                raise QabiError(f"{origin}: not a valid {fields[i]} public key: {exc}") from None
    raise QabiError(f"{origin}: not an OpenSSH public key line: {line[:60]!r}")


def read_host_keys(path: Path) -> tuple[str, ...]:
    """Pinned host keys from a file: .pub lines or known_hosts lines (comments and blanks skipped)."""
    text = read_text(path, "a host key file")
    lines = tuple(ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#"))
    if not lines:
        raise QabiError(f"host key file {path} holds no key")
    for number, line in enumerate(lines, 1):
        parse_public_key(line, f"{path}: key {number}")
    return lines


def load_private_key(path: Path) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(path)
    except FileNotFoundError:
        raise QabiError(f"SSH key {path} does not exist") from None
    except PermissionError:
        raise QabiError(f"SSH key {path} is not readable") from None
    except (paramiko.SSHException, ValueError, OSError) as exc:
        raise QabiError(f"SSH key {path} is not a usable private key: {exc}") from None


def openssh_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


class KeyOnlyClient(paramiko.SSHClient):
    """An SSH client that logs in with its one key and nothing else: no agent, no ~/.ssh keys, no
    password, and no keyboard-interactive. A server that answers the key with partial success (it
    wants a second method) is an authentication failure, never a prompt on the user's terminal."""

    def _auth(self, username: str, password: str | None, pkey: paramiko.PKey | None,  # type: ignore[override]
              *_args: object, **_kwargs: object) -> None:
        transport = self._transport  # type: ignore[attr-defined]
        if pkey is None or password is not None:
            raise paramiko.AuthenticationException("qabi logs in with a key only")
        remaining = transport.auth_publickey(username, pkey)
        if remaining or not transport.is_authenticated():
            raise paramiko.AuthenticationException(
                "the server accepted the key only as a first step and asks for more "
                f"({', '.join(remaining) or 'unknown'}); qabi logs in with the key alone")


class _Unpinned(Exception):
    def __init__(self, key: paramiko.PKey) -> None:
        super().__init__(openssh_line(key))
        self.key = key


class _RefuseUnpinned(paramiko.MissingHostKeyPolicy):
    """Refuse any key that is not pinned, remembering what was offered for the error message."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _Unpinned(key)


# -- the run -----------------------------------------------------------------------------------
def run(argv: list[str], env: dict[str, str], workdir: Path, console_log: Path, timeout: float,
        login: SshLogin, probe: bytes) -> TransportResult:
    """Run `argv` (with `-qmp unix:WORKDIR/qmp.sock,...`, the serial port to the file `console_log`
    and a NIC whose netdev has HOSTFWD), probe over SSH.
    """

    pinned = [parse_public_key(line) for line in login.host_keys]
    pkey = load_private_key(login.key)
    stderr_path = workdir / "qemu.stderr"
    started = time.monotonic()
    deadline = started + timeout
    timings: dict[str, float] = {}
    with spawn(argv, env, stderr_path=stderr_path) as proc:
        def stderr() -> str:
            return stderr_path.read_text(errors="replace") if stderr_path.exists() else ""

        def check_alive() -> None:
            if proc.poll() is not None:
                if proc.returncode == 0:
                    raise CaptureError(f"the guest powered off before the probe ran: {_guest_said(console_log)} "
                                       f"(console log: {console_log})")
                raise early_exit_error(stderr(), console_log)

        port = _forwarded_port(workdir / "qmp.sock", check_alive, deadline)
        timings["qmp"] = round(time.monotonic() - started, 3)
        if login.ready_marker:
            _wait_ready(console_log, login.ready_marker, check_alive, deadline, timeout)
            timings["sshd_ready"] = round(time.monotonic() - started, 3)
        client, offered = _connect(port, login, pkey, pinned, check_alive, deadline, timeout, console_log)
        timings["boot_to_ssh"] = round(time.monotonic() - started, 3)
        try:
            upload, text, err = _run_probe(client, login, probe, deadline, console_log)
            timings["transfer"] = round(time.monotonic() - started - timings["boot_to_ssh"], 3)
            shutdown = _shutdown(client, login, proc)
        finally:
            client.close()
        timings["total"] = round(time.monotonic() - started, 3)
    try:
        output = parse(text)
    except CaptureError as exc:
        hint = f"; probe stderr: {err.strip().splitlines()[-1]}" if err.strip() else ""
        raise CaptureError(f"{exc}{hint} (console log: {console_log})") from None
    if output.skipped:
        first = output.skipped[0]
        raise CaptureError(f"the probe could not read {len(output.skipped)} file(s), e.g. {first.path}: "
                           f"{first.reason} (console log: {console_log})")
    return TransportResult(list(output.records), dict(output.info), timings,
                           details={"user": login.user, "host_key": offered, "upload": upload, "shutdown": shutdown})


def _guest_said(console_log: Path) -> str:
    """Why the guest gave up, if its console says (the reference guest's @@QABI-SSH-ERROR line)."""
    try:
        text = console_log.read_bytes()[-65536:].decode("ascii", errors="replace")
    except OSError:
        return "no console output"
    found = re.findall(r"@@QABI-SSH-ERROR ([^\r\n]*)", text)
    return found[-1] if found else "its console gives no reason"


def _wait_ready(console_log: Path, marker: str, check_alive: object, deadline: float, timeout: float) -> None:
    """Wait until the console shows `marker` (no connection attempts into a guest still booting)."""
    needle = marker.encode()
    while True:
        with contextlib.suppress(OSError):
            data = console_log.read_bytes()
            if needle in data:
                return
            if b"@@QABI-SSH-ERROR" in data:
                raise CaptureError(f"the guest could not start sshd: {_guest_said(console_log)} "
                                   f"(console log: {console_log})")
        check_alive()  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise CaptureError(f"the guest's sshd never answered within {timeout:.0f}s (no {marker} on the "
                               f"console; console log: {console_log})")
        time.sleep(0.05)


def _forwarded_port(qmp_path: Path, check_alive: object, deadline: float) -> int:
    """The host port QEMU bound for the guest's sshd, read from `info usernet` over QMP."""
    from qemu.qmp.legacy import QEMUMonitorProtocol

    while not qmp_path.exists():
        check_alive()  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise CaptureError("QEMU did not open its QMP socket")
        time.sleep(0.02)
    while True:  # the socket file appears when QEMU binds it, a moment before it listens
        qmp = QEMUMonitorProtocol(str(qmp_path))
        try:
            qmp.connect()
            break
        except Exception as exc:  # noqa: BLE001 - qemu.qmp wraps the OSError in its ConnectError
            with contextlib.suppress(Exception):
                qmp.close()
            check_alive()  # type: ignore[operator]
            if not isinstance(getattr(exc, "exc", exc), (ConnectionRefusedError, FileNotFoundError)):
                raise CaptureError(f"cannot connect to QEMU's QMP socket: {exc}") from None
            if time.monotonic() > deadline:
                raise CaptureError("QEMU did not answer on its QMP socket") from None
            time.sleep(0.02)
    try:
        reply = qmp.cmd_obj({"execute": "human-monitor-command", "arguments": {"command-line": "info usernet"}})
        text = reply.get("return", "")
    except Exception as exc:  # noqa: BLE001 - qemu.qmp raises many kinds; all mean the same here
        check_alive()  # type: ignore[operator]
        raise CaptureError(f"cannot ask QEMU for its forwarded SSH port over QMP: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            qmp.close()
    match = _FORWARD.search(str(text))
    if not match:
        raise CaptureError(f"QEMU reports no host forward to guest port {GUEST_PORT} (is the profile's NIC "
                           "on user-mode networking?)")
    return int(match.group(1))


def _connect(port: int, login: SshLogin, pkey: paramiko.PKey, pinned: list[paramiko.PKey], check_alive: object,
             deadline: float, timeout: float, console_log: Path) -> tuple[paramiko.SSHClient, str]:
    """Log in, retrying while the guest boots; wrong host key or refused login fail at once."""
    host = f"[127.0.0.1]:{port}"
    last = "no answer"
    banner = BANNER_FIRST
    while True:
        check_alive()  # type: ignore[operator]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CaptureError(f"the guest's sshd never answered within {timeout:.0f}s (last: {last}; "
                               f"console log: {console_log})")
        client = KeyOnlyClient()
        for key in pinned:
            client.get_host_keys().add(host, key.get_name(), key)
        client.set_missing_host_key_policy(_RefuseUnpinned())
        attempt = max(1.0, min(CONNECT_ATTEMPT, remaining))
        try:
            client.connect("127.0.0.1", port=port, username=login.user, pkey=pkey, look_for_keys=False,
                           allow_agent=False, timeout=attempt, banner_timeout=min(banner, attempt),
                           auth_timeout=attempt, channel_timeout=attempt)
            transport = client.get_transport()
            assert transport is not None
            return client, openssh_line(transport.get_remote_server_key())
        except _Unpinned as exc:
            client.close()
            want = ", ".join(f"{k.get_name()} {k.get_fingerprint().hex()[:16]}…" for k in pinned) or "none"
            raise CaptureError(f"the guest's SSH host key is not pinned: it offered {exc.key.get_name()} "
                               f"{exc.key.get_base64()} (pinned: {want}); refusing to connect") from None
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise CaptureError(f"wrong SSH host key: the guest offered {exc.key.get_name()} "
                               f"{exc.key.get_base64()}, which is not the pinned key; refusing to connect") from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise CaptureError(f"SSH authentication failed for user '{login.user}' with key {login.key}: "
                               f"{exc}") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            # not up yet: user-mode networking accepts the TCP connection and drops it until sshd listens
            # (a guest whose NIC is not up yet leaves the connection silent: retry soon, then less eagerly)
            client.close()
            last = str(exc) or type(exc).__name__
            if "banner" in last:
                banner = min(banner * 2, CONNECT_ATTEMPT)
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))


def _run_probe(client: paramiko.SSHClient, login: SshLogin, probe: bytes, deadline: float,
               console_log: Path) -> tuple[str, str, str]:
    """(upload method, probe stdout, probe stderr); raises if the connection drops."""
    remote = f"/tmp/qabi-probe-{secrets.token_hex(6)}.sh"
    upload = "sftp"
    try:
        sftp = client.open_sftp()
        try:
            sftp.putfo(io.BytesIO(probe), remote)
            # dropbear before 2024.86 (bookworm's) drops a channel opened while an earlier session's
            # child is exiting (upstream #173/#321): let sftp-server exit before the next channel
            channel = sftp.get_channel()
            if channel is not None:
                channel.shutdown_write()
                channel.status_event.wait(max(1.0, min(10.0, deadline - time.monotonic())))
        finally:
            sftp.close()
    except paramiko.SSHException:
        # the guest has no SFTP server: the same bytes over an exec channel
        upload = "exec"
        status, _out, err = _exec(client, f"cat > {remote}", probe, deadline)
        if status != 0:
            raise CaptureError(f"cannot upload the probe to the guest: {err.strip() or f'exit status {status}'}")
    except OSError as exc:
        raise CaptureError(f"cannot upload the probe to the guest over SFTP: {exc} "
                           f"(console log: {console_log})") from None
    env = "".join(f"{k}={v} " for k, v in login.probe_env)
    command = f"{login.sudo}/bin/sh -c '{env}sh {remote}; s=$?; rm -f {remote}; exit $s'"
    try:
        status, out, err = _exec(client, command, b"", deadline)
    except CaptureError as exc:
        raise CaptureError(f"{exc} (console log: {console_log})") from None
    text = out.decode("ascii", errors="replace")
    if "@@QABI-BEGIN" not in text:
        why = err.strip().splitlines()[-1] if err.strip() else f"exit status {status}"
        raise CaptureError(f"the probe did not start in the guest: {why} (console log: {console_log})")
    return upload, text, err


def _exec(client: paramiko.SSHClient, command: str, stdin: bytes, deadline: float) -> tuple[int, bytes, str]:
    """Run `command`, feed `stdin`, return (exit status, stdout, stderr); a dropped connection raises."""
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise CaptureError("the SSH connection dropped")
    try:
        channel = transport.open_session(timeout=max(1.0, deadline - time.monotonic()))
        channel.settimeout(1.0)
        channel.exec_command(command)
        if stdin:
            channel.sendall(stdin)
        channel.shutdown_write()
        out, err = bytearray(), bytearray()
        while True:
            if time.monotonic() > deadline:
                raise CaptureError("timed out while the probe was sending over SSH")
            got = False
            with contextlib.suppress(socket.timeout):
                while channel.recv_stderr_ready():
                    err = _tail(err + channel.recv_stderr(1 << 16))
                chunk = channel.recv(1 << 16)
                got = True
                if not chunk:
                    break
                out += chunk
                if len(out) > MAX_OUTPUT:
                    raise CaptureError(f"probe output exceeds {MAX_OUTPUT >> 20} MiB")
            if not got and not transport.is_active():
                break
        while channel.recv_stderr_ready() and time.monotonic() < deadline:
            err = _tail(err + channel.recv_stderr(1 << 16))
        status = channel.recv_exit_status() if transport.is_active() else -1
        if status == -1:  # the channel closed without an exit status: the connection went away
            raise CaptureError(f"the SSH connection dropped while the probe was sending "
                               f"({len(out)} bytes received)")
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise CaptureError(f"the SSH connection dropped while the probe was sending: {exc}") from None
    return status, bytes(out), err.decode(errors="replace")


def _tail(buffer: bytearray) -> bytearray:
    """`buffer` bounded to its last MAX_STDERR bytes (read as it arrives, never grown past that)."""
    return buffer if len(buffer) <= MAX_STDERR else buffer[-MAX_STDERR:]


def _shutdown(client: paramiko.SSHClient, login: SshLogin, proc: object) -> str:
    """Ask the guest to power off and wait for QEMU to exit: "clean", or "forced" (killed after the wait)."""
    transport = client.get_transport()
    if transport is not None and transport.is_active():
        with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
            channel = transport.open_session(timeout=5)
            channel.exec_command(f"{login.sudo}{login.shutdown}")
            # closing the connection at once could hang the command up before it acts: wait until it
            # returns (systemd queues the power-off) or the guest goes away under it (poweroff -f)
            wait_for(lambda: channel.exit_status_ready() or not transport.is_active(), 15, interval=0.05)
    client.close()
    if wait_for(lambda: proc.poll() is not None, SHUTDOWN_WAIT):  # type: ignore[attr-defined]
        return "clean"
    return "forced"  # spawn() kills the process group on the way out


TRANSPORT = SshTransport()
