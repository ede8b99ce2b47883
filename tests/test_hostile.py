"""Hostile input, one test (or more) per class of issue 16: what qabi refuses, and how it fails.

Every failure is exit 2 with one line on stderr (never 1, never a traceback). Real QEMU (the host's
`system` build, TCG) where the class needs it: a build that lacks a device (class 1), signals
mid-boot (class 9); a real OpenSSH server for the key-only login (class 5); real tmpfs mounts in a
private mount namespace for a full and a read-only disk (class 3).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA, REPO, run_qabi

from harness.guest.drivers import ALIASES, DRIVERS

CAPTURE = DATA / "captures" / "qemu-10.0-pc-q35-5.2-minimal"
MODULES = Path("/usr/lib/x86_64-linux-gnu/qemu")
MINIMAL = ('description = "test"\ncpu = "qemu64"\nmemory = 256\nsmp = { cpus = 1 }\n'
           'uuid = "6a1e0d3c-0000-4000-8000-0000000000ee"\n')
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts in a private namespace)")


def _one_line_exit_2(done: subprocess.CompletedProcess[str]) -> str:
    """The failure contract: exit 2, no traceback, a last stderr line starting `qabi: error:`."""
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("qabi: error: "), done.stderr
    return lines[-1]


def _profile(tmp_path: Path, body: str, name: str = "p") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(MINIMAL + body)
    return path


# -- class 1: a device one build lacks is never a silent pass ---------------------------------------
@pytest.fixture(scope="module")
def no_qxl_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real QEMU build without QXL: the host's qemu-system-x86_64 run in a private mount namespace
    where its module dir lacks hw-display-qxl.so (as when the QXL module package is not installed)."""
    if os.geteuid() != 0 or not (MODULES / "hw-display-qxl.so").is_file():
        pytest.skip("needs root and the host QEMU's QXL module")
    root = tmp_path_factory.mktemp("noqxl")
    modules = root / "modules"
    modules.mkdir()
    for module in MODULES.iterdir():
        if module.name != "hw-display-qxl.so":
            shutil.copy2(module, modules / module.name)
    wrapper = root / "qemu-system-x86_64"
    wrapper.write_text("#!/bin/sh\nexec unshare --mount --propagation private sh -c "
                       "'mount --bind \"$0\" " + str(MODULES) + " && exec /usr/bin/qemu-system-x86_64 \"$@\"' "
                       f"{modules} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def test_device_the_new_build_lacks_is_a_break_drift(tmp_path, no_qxl_build):
    profile = _profile(tmp_path, '[[device]]\ndriver = "qxl-vga"\naddr = "0x2"\n', "qxl")
    done = run_qabi("check", "--old", "system", "--new", str(no_qxl_build), "--machine", "pc-i440fx-7.2",
                    "--guest", str(profile), "--json", str(tmp_path / "v.json"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BREAK  profile device qxl-vga" in done.stdout and "verdict: DRIFT" in done.stdout
    run = json.loads((tmp_path / "v.json").read_text())["runs"][0]
    assert run["status"] == "compared" and run["drifts"][0]["severity"] == "break"


def test_device_the_old_build_lacks_never_lets_the_verdict_be_unchanged(tmp_path, no_qxl_build):
    """The severe case: one run unsupported, another compared and unchanged: exit 2, not 0."""
    qxl = _profile(tmp_path, '[[device]]\ndriver = "qxl-vga"\naddr = "0x2"\n', "qxl")
    done = run_qabi("check", "--old", str(no_qxl_build), "--new", "system", "--machine", "pc-i440fx-7.2",
                    "--guest", "minimal", "--guest", str(qxl), timeout=900)
    line = _one_line_exit_2(done)
    assert "not compared" in line and "qxl-vga" in line
    assert "verdict: ERROR" in done.stdout and "1 unsupported (not compared)" in done.stdout
    assert "1 run compared" in done.stdout  # the minimal run was compared, and still no clean verdict


def test_device_neither_build_has_is_a_profile_error(tmp_path):
    # igb is on the allow-list and came with QEMU 8.0: the system build (7.2) lacks it
    profile = _profile(tmp_path, '[[device]]\ndriver = "igb"\naddr = "0x3"\n', "igb")
    done = run_qabi("check", "--old", "system", "--new", "system", "--machine", "pc-i440fx-7.2",
                    "--guest", str(profile))
    assert "'igb' is on neither build" in _one_line_exit_2(done)


def test_a_driver_typo_is_refused_when_the_profile_loads_with_a_hint(tmp_path):
    profile = _profile(tmp_path, '[[device]]\ndriver = "qxl-vgaa"\naddr = "0x2"\n', "typo")
    done = run_qabi("check", "--old", "system", "--new", "system", "--machine", "pc-i440fx-7.2",
                    "--guest", str(profile))
    line = _one_line_exit_2(done)
    assert "driver 'qxl-vgaa' is not allowed" in line and "close: qxl-vga" in line


@pytest.mark.parametrize("driver", ["qxl-vga,romfile=/etc/passwd", "../qxl", "qxl vga", "",
                                    "usb-host", "vfio-pci", "vhost-vsock-pci"])  # the last: issue 19 class 5
def test_driver_names_are_checked_when_the_profile_loads(tmp_path, driver):
    profile = _profile(tmp_path, f'[[device]]\ndriver = "{driver}"\n')
    done = run_qabi("capture", "--qemu", "system", "--machine", "pc-i440fx-7.2", "--guest", str(profile),
                    "-o", str(tmp_path / "out"))
    assert "device 0: driver" in _one_line_exit_2(done)
    assert not (tmp_path / "out").exists()


# -- class 3: every failure is exit 2 with one line ---------------------------------------------------
def _capture_copy(tmp_path: Path) -> Path:
    cap = tmp_path / "cap"
    shutil.copytree(CAPTURE, cap)
    return cap


@pytest.mark.parametrize("manifest,expected", [
    ("[]", "expected a dict"),
    ('{"complete": true}', "has no valid 'build'"),
    (('{"complete": true, "build": {}, "profile": {"name": "x"}, "machine": {"asked": "a", "resolved": "b"}, '
     '"image": {"sha256": "x"}, "accel": "tcg", "files": {"raw/../../etc/passwd": "00"}}'), "bad file entry"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
], ids=["list", "no-keys", "path-escape", "deep"])
def test_malformed_manifest_is_one_line_exit_2(tmp_path, manifest, expected):
    cap = _capture_copy(tmp_path)
    (cap / "manifest.json").write_text(manifest)
    assert expected in _one_line_exit_2(run_qabi("fingerprint", str(cap)))


def test_deeply_nested_fingerprint_json_is_exit_2(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text('{"a":' * 200000 + "1" + "}" * 200000)
    assert "nested too deeply" in _one_line_exit_2(run_qabi("diff", str(deep), str(deep)))


def test_deeply_nested_report_json_names_the_file(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200000 + "]" * 200000)
    for args in (("report", str(deep), "-o", str(tmp_path / "page")),
                 ("report", "--merge", str(deep), str(deep), "-o", str(tmp_path / "merged"))):
        line = _one_line_exit_2(run_qabi(*args))
        assert f"{deep}: not a JSON report (nested too deeply)" in line, line
    assert not (tmp_path / "page").exists() and not (tmp_path / "merged").exists()


def test_output_naming_a_directory_is_exit_2(tmp_path):
    assert "is a directory" in _one_line_exit_2(run_qabi("fingerprint", str(CAPTURE), "-o", str(tmp_path)))
    done = run_qabi("diff", str(CAPTURE), str(CAPTURE), "--json", str(tmp_path))
    assert "is a directory" in _one_line_exit_2(done)


def test_invalid_baseline_build_json_is_exit_2(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "build.json").write_text("[1, 2")
    done = run_qabi("check", "--old", str(base), "--new", "system", "--machine", "pc-i440fx-7.2",
                    "--guest", "minimal")
    line = _one_line_exit_2(done)
    assert "could not decide" in line


def test_guest_path_component_over_255_bytes_is_refused():
    from harness.errors import CaptureError
    from harness.transport.framing import check_path

    with pytest.raises(CaptureError, match="over 255 bytes"):
        check_path("/sys/" + "a" * 256)
    check_path("/sys/" + "a" * 255)


def _in_namespace(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`script` (sh) in a private mount namespace: its mounts vanish with it."""
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
                          capture_output=True, text=True, timeout=900, cwd=REPO, env={**os.environ, **env},
                          stdin=subprocess.DEVNULL, check=False)


QABI = f"{sys.executable} -m harness.cli"


@needs_root
def test_full_disk_on_output_is_exit_2_and_leaves_nothing(tmp_path):
    out = tmp_path / "small"
    out.mkdir()
    done = _in_namespace(f"mount -t tmpfs -o size=16k tmpfs {out}\n"
                         f"{QABI} fingerprint {CAPTURE} -o {out}/fp.json || rc=$?\n"
                         f"ls -A {out} >&2\nexit ${{rc:-0}}")
    line = _one_line_exit_2(done)
    assert "No space left on device" in line and "fp.json" in line
    assert ".tmp" not in done.stderr   # the atomic writer's temporary file is gone


@needs_root
def test_full_cache_is_exit_2(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    done = _in_namespace(f"mount -t tmpfs -o size=64k tmpfs {cache}\n"
                         f"head -c 60k /dev/zero > {cache}/filler 2>/dev/null || true\n"
                         f"{QABI} qemu info system", XDG_CACHE_HOME=str(cache))
    assert "cannot" in _one_line_exit_2(done)


@needs_root
@pytest.mark.parametrize("verb", [
    "qemu info system", "qemu list", "guest build",
    "capture --qemu system --machine pc-i440fx-7.2 --guest minimal -o OUT/c",
    "check --old system --new system --machine pc-i440fx-7.2 --guest minimal",
    "record --qemu system --machine pc-i440fx-7.2 --guest minimal -o OUT/rec",
])
def test_read_only_cache_is_exit_2_on_every_verb(tmp_path, verb):
    cache = tmp_path / "cache"
    cache.mkdir()
    done = _in_namespace(f"mount -t tmpfs tmpfs {cache}\nmkdir {cache}/qabi\nmount -o remount,ro {cache}\n"
                         f"{QABI} {verb.replace('OUT', str(tmp_path))}", XDG_CACHE_HOME=str(cache))
    line = _one_line_exit_2(done)
    assert "cannot be written" in line or "could not decide" in line, line


def test_check_that_cannot_decide_says_why_on_stderr(tmp_path):
    done = run_qabi("check", "--old", str(tmp_path / "nowhere"), "--new", "system")
    _one_line_exit_2(done)


# -- class 4: control characters in error messages ----------------------------------------------------
def test_error_messages_escape_control_characters(tmp_path):
    done = run_qabi("fingerprint", str(tmp_path / "x\x1b]0;pwned\x07\x9b2J"))
    line = _one_line_exit_2(done)
    assert "\x1b" not in done.stderr and "\x07" not in done.stderr and "\x9b" not in done.stderr
    assert "\\x1b]0;pwned\\x07" in line


def test_pytest_front_door_escapes_its_exit_message():
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "harness/",
                           "--qemu-old", "nonsense\x1b]0;x\x07", "--qemu-new", "system"],
                          capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert done.returncode == 2
    assert "\x1b]0;x" not in done.stdout + done.stderr and "\\x1b]0;x" in done.stdout + done.stderr


# -- class 5: SSH is key only -------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sshd(tmp_path):
    """A real OpenSSH server on localhost; `start(methods)` runs it with those AuthenticationMethods."""
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if os.geteuid() != 0 or not Path(sshd_bin).is_file():
        pytest.skip("needs root and openssh-server")
    Path("/run/sshd").mkdir(exist_ok=True)
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True)
    (tmp_path / "authorized_keys").write_text((tmp_path / "client.pub").read_text())
    procs: list[subprocess.Popen[bytes]] = []

    def start(methods: str) -> int:
        port = _free_port()
        config = tmp_path / f"sshd_config_{port}"
        config.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path / 'host'}\n"
                          f"PidFile {tmp_path / f'sshd_{port}.pid'}\nAuthorizedKeysFile {tmp_path / 'authorized_keys'}\n"
                          "StrictModes no\nUsePAM no\nPermitRootLogin yes\nKbdInteractiveAuthentication yes\n"
                          f"PasswordAuthentication yes\nAuthenticationMethods {methods}\n")
        proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s, __import__("contextlib").suppress(OSError):
                s.connect(("127.0.0.1", port))
                return port
            time.sleep(0.05)
        raise AssertionError("sshd did not start")

    yield start, tmp_path
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


def _login(tmp_path: Path, port: int) -> object:
    from harness.transport import ssh

    login = ssh.SshLogin(user="root", key=tmp_path / "client", host_keys=((tmp_path / "host.pub").read_text(),))
    pinned = [ssh.parse_public_key(line) for line in login.host_keys]
    return ssh._connect(port, login, ssh.load_private_key(login.key), pinned, lambda: None,
                        time.monotonic() + 20, 20, tmp_path / "console.log")


def test_ssh_partial_success_is_an_authentication_failure(sshd):
    from harness.errors import CaptureError

    start, tmp_path = sshd
    port = start("publickey,keyboard-interactive")
    with pytest.raises(CaptureError, match="asks for more .*keyboard-interactive"):
        _login(tmp_path, port)


def test_ssh_key_alone_logs_in(sshd):
    start, tmp_path = sshd
    client, host_key = _login(tmp_path, start("publickey"))  # type: ignore[misc]
    client.close()
    assert host_key.split()[1] == (tmp_path / "host.pub").read_text().split()[1]


# -- class 6: -o never destroys user data ---------------------------------------------------------------
def test_capture_output_never_replaces_user_data(tmp_path):
    victim = tmp_path / "notes.txt"
    victim.write_text("mine")
    only_raw = tmp_path / "mine"
    (only_raw / "raw").mkdir(parents=True)
    (only_raw / "raw" / "data").write_text("mine too")
    unsigned = tmp_path / "unsigned"
    unsigned.mkdir()
    (unsigned / "FAILED").write_text("something else\n")
    for out in (victim, only_raw, unsigned):
        done = run_qabi("capture", "--qemu", "system", "--machine", "pc-i440fx-7.2", "--guest", "minimal",
                        "-o", str(out))
        assert "refusing to overwrite" in _one_line_exit_2(done)
    assert victim.read_text() == "mine" and (only_raw / "raw" / "data").read_text() == "mine too"
    assert (unsigned / "FAILED").read_text() == "something else\n"


def test_only_qabis_own_failed_capture_is_replaced(tmp_path):
    from harness.capture import FAILED_SIGNATURE, _prepare_out

    own = tmp_path / "own"
    own.mkdir()
    (own / "FAILED").write_text(f"{FAILED_SIGNATURE}\nCaptureError: boom\n")
    (own / "console.log").write_text("boot")
    _prepare_out(own)
    assert not own.exists()
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "FAILED").write_text(f"{FAILED_SIGNATURE}\n")
    (tmp_path / "more" / "thesis.tex").write_text("mine")
    from harness.errors import QabiError

    with pytest.raises(QabiError, match="not qabi's own failed capture"):
        _prepare_out(tmp_path / "more")


# -- class 7: strict profiles ---------------------------------------------------------------------------
@pytest.mark.parametrize("body,message", [
    ("spm = 2\n", "unknown key(s) spm"),
    ("", None),
])
def test_profile_top_level(tmp_path, body, message):
    from harness.errors import QabiError
    from harness.guest.profile import load_profile

    path = _profile(tmp_path, body)
    if message is None:
        assert load_profile(str(path)).name == "p"
    else:
        with pytest.raises(QabiError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_profile(str(path))


BAD_PROFILES = [
    ("smp = { cpus = 1 }", "smp = 2", "smp must be a table"),
    ("smp = { cpus = 1 }", "smp = { cpus = 0 }", r"smp.cpus = 0 is out of range"),
    ("smp = { cpus = 1 }", "smp = { cpus = 1, cpu = 2 }", "smp: unknown key"),
    ("memory = 256", "memory = -5", r"memory \(MiB\) = -5 is out of range"),
    ("memory = 256", "memory = 0", "out of range"),
    ("memory = 256", 'memory = "256"', "must be an integer"),
    ("memory = 256", "memory = true", "must be an integer"),
    ("cpu = \"qemu64\"", 'cpu = "qemu64,romfile=/etc/passwd"', "cpu"),
    ("uuid = \"6a1e0d3c-0000-4000-8000-0000000000ee\"", "uuid = 5", "uuid must be a string"),
    ("", 'name = "../../etc"', "name '../../etc' is not valid"),
    ("", '[[device]]\ndriver = "ide-hd"\nprops = { serial = "X,romfile=/etc/passwd" }', "property 'serial' of ide-hd"),
    ("", '[[device]]\ndriver = "e1000"\nprops = { romfile = "/etc/passwd" }', "property 'romfile' is not allowed"),
    ("", '[[device]]\ndriver = "virtio-blk-pci"\nprops = { drive = "x" }', "property 'drive' is not allowed"),
    ("", '[[device]]\ndriver = "e1000"\nprops = { "x-logfile" = "a" }', "not allowed"),
    ("", '[[device]]\ndriver = "ide-hd"\nprops = { serial = [1] }', "must be text"),
    ("", '[[device]]\ndriver = "e1000"\nmac = "52:54:00:a1:00:01,romfile=/x"', "mac"),
    ("", '[[device]]\ndriver = "e1000"\nmac = "53:54:00:a1:00:01"', "mac"),
    ("", '[[device]]\ndriver = "e1000"\naddr = "0x3,romfile=/x"', "addr"),
    ("", '[[device]]\ndriver = "ide-hd"\nbus = "ide.0,drive=x"', "bus"),
    ("", '[[device]]\ndriver = "ide-hd"\ndisk = "0"', "disk size"),
    ("", '[[device]]\ndriver = "ide-hd"\ndisk = "9T"', "disk size"),
    ("", '[[device]]\ndriver = "ide-hd"\ndisk = "1Q"', "bad disk size"),
    ("", '[[device]]\ndriver = "e1000"\nid = "qabinet0"', "qabi's own"),
    ("", '[[device]]\ndriver = "e1000"\nid = "a"\n[[device]]\ndriver = "e1000"\nid = "a"', "used twice"),
    ("", '[[device]]\ndriver = "e1000"\ncdrom = "yes"', "true or false"),
    ("", '[[device]]\ndriver = "e1000"\nfamilies = ["z80"]', "families"),
    ("", '[[device]]\ndriver = "e1000"\nbogus = 1', "unknown key"),
]


@pytest.mark.parametrize("old,new,message", BAD_PROFILES)
def test_bad_profiles_are_refused(tmp_path, old, new, message):
    from harness.errors import QabiError
    from harness.guest.profile import load_profile

    text = (MINIMAL.replace(old, new) if old else MINIMAL + new + "\n")
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(QabiError, match=message):
        load_profile(str(path))


def test_profile_file_name_must_be_a_safe_name(tmp_path):
    from harness.errors import QabiError
    from harness.guest.profile import load_profile

    odd = tmp_path / "a b;c.toml"
    odd.write_text(MINIMAL)
    with pytest.raises(QabiError, match="not a valid profile name"):
        load_profile(str(odd))
    with pytest.raises(QabiError, match="bad guest profile name"):
        load_profile("../../etc/passwd")


def test_launcher_escapes_option_values():
    from harness.transport.launch import _opt

    assert _opt("a,b") == "a,,b"


# -- class 8: waivers -----------------------------------------------------------------------------------
def test_catch_all_waiver_needs_scope_all():
    from harness.drift.waivers import parse_waivers
    from harness.errors import QabiError

    catch_all = '[[waiver]]\ncategory = "*"\nsubject = "**"\nreason = "whatever"\n'
    with pytest.raises(QabiError, match='matches every drift .*scope = "all"'):
        parse_waivers(catch_all)
    assert len(parse_waivers(catch_all + 'scope = "all"\n')) == 1
    with pytest.raises(QabiError, match="scope must be"):
        parse_waivers(catch_all + 'scope = "everything"\n')
    # a restriction makes it an ordinary waiver
    assert len(parse_waivers(catch_all + 'path = "rom_size"\n')) == 1


@pytest.mark.parametrize("glob", ["pci {a,b", "pci a}", "{{a}"])
def test_unbalanced_braces_are_refused(glob):
    from harness.drift.waivers import parse_waivers
    from harness.errors import QabiError

    with pytest.raises(QabiError, match="without its"):
        parse_waivers(f'[[waiver]]\ncategory = "pci"\nsubject = "{glob}"\nreason = "r"\n')


def test_every_waived_break_is_named_in_the_verdict_line():
    from harness.drift import compare
    from harness.drift.waivers import parse_waivers
    from harness.fingerprint import fingerprint_capture
    from harness.report import Run, RunSet
    from harness.report.view import verdict_line

    old = fingerprint_capture(DATA / "captures" / "qemu-5.2-pc-i440fx-5.2-legacy")
    new = fingerprint_capture(DATA / "captures" / "qemu-10.0-pc-i440fx-5.2-legacy")
    waivers = parse_waivers('[[waiver]]\ncategory = "*"\nsubject = "*"\nreason = "all"\nscope = "all"\n')
    comparison = compare(old, new, waivers)
    breaks = {f"{d.subject} {d.path}".strip() for d in comparison.drifts if d.severity == "break"}
    assert breaks, "the sample pair has breaks"
    line = verdict_line(RunSet((Run.from_fingerprints(old, new, comparison),)))
    assert line.startswith("verdict: UNCHANGED") and "waived breaks:" in line
    assert all(b in line for b in breaks)


# -- class 9: signals and litter -----------------------------------------------------------------------
def test_sigterm_mid_boot_cleans_up_and_exits_2(tmp_path):
    work_tmp = tmp_path / "tmp"     # qabi's private run dirs go here: QEMU's argv carries this path
    work_tmp.mkdir()
    out = tmp_path / "out" / "cap"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "capture", "--qemu", "system", "--machine",
                             "pc-i440fx-7.2", "--guest", "minimal", "--transport", "serial",
                                 "-o", str(out)],
                            cwd=REPO, env={**os.environ, "TMPDIR": str(work_tmp)}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def qemu() -> list[str]:
        found = subprocess.run(["pgrep", "-f", f"qemu-system-x86_64.*{work_tmp}"], capture_output=True, text=True,
                               check=False)
        return found.stdout.split()

    deadline = time.monotonic() + 300
    while not qemu() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert qemu(), "QEMU never started"
    time.sleep(1.0)   # mid-boot
    proc.send_signal(signal.SIGTERM)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert stderr.strip().splitlines()[-1] == "qabi: error: stopped by SIGTERM"
    assert "Traceback" not in stderr
    time.sleep(0.5)
    assert qemu() == []
    assert list(work_tmp.iterdir()) == []                              # no temporary run dir
    assert [p.name for p in out.parent.iterdir()] == ["cap"]            # no .cap.partial-PID
    assert sorted(p.name for p in out.iterdir()) <= ["FAILED", "console.log"]   # no raw/


def test_stale_staging_dirs_of_dead_processes_are_swept(tmp_path):
    from harness.cache import staging_dir, sweep_stale

    child = subprocess.Popen(["true"])
    child.wait()
    stale = tmp_path / f".cap.partial-{child.pid}"
    (stale / "raw").mkdir(parents=True)
    live = tmp_path / f".cap.partial-{os.getpid()}"
    live.mkdir()
    user = tmp_path / "partial-1"
    user.mkdir()
    fresh = tmp_path / f".new.partial-{child.pid}"   # maybe another PID namespace's: left for an hour
    fresh.mkdir()
    hour_ago = time.time() - 3700
    for old in (stale, live, user):
        os.utime(old, (hour_ago, hour_ago))
    sweep_stale(tmp_path)
    assert not stale.exists() and live.exists() and user.exists() and fresh.exists()
    image_stale = tmp_path / f".img.partial-{child.pid}-abc"
    image_stale.mkdir()
    os.utime(image_stale, (hour_ago, hour_ago))
    with staging_dir(tmp_path / "img") as tmp:
        assert f".img.partial-{os.getpid()}-" in tmp.name
        (tmp / "x").write_text("x")
    assert not image_stale.exists() and (tmp_path / "img" / "x").exists()


# -- class 10: floods ------------------------------------------------------------------------------------
def _flood(fd: int, total: int, tail: bytes = b"") -> None:
    chunk = b"A" * (1 << 16)
    sent = 0
    try:
        while sent < total:
            sent += os.write(fd, chunk)
        os.write(fd, tail)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_console_flood_is_stopped_at_the_cap_in_linear_time():
    import resource

    import pexpect

    from harness.errors import CaptureError
    from harness.transport.serial import BEGIN, MAX_CONSOLE, BoundedConsole

    read_end, write_end = os.pipe()
    writer = threading.Thread(target=_flood, args=(write_end, MAX_CONSOLE + (8 << 20)), daemon=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    writer.start()
    child = BoundedConsole(read_end, timeout=120)
    with pytest.raises(CaptureError, match="exceeds 64 MiB"):
        child.expect([BEGIN, pexpect.EOF, pexpect.TIMEOUT])
    spent = resource.getrusage(resource.RUSAGE_SELF).ru_utime - before
    os.close(read_end)
    assert child.total <= MAX_CONSOLE + (1 << 16)
    assert spent < 20, f"{spent:.1f}s of CPU to read 64 MiB: the matcher is not linear"


def test_marker_after_a_flood_is_still_found():
    import pexpect

    from harness.transport.serial import BEGIN, BoundedConsole

    read_end, write_end = os.pipe()
    writer = threading.Thread(target=_flood, args=(write_end, 8 << 20, b"\n@@QABI-BEGIN 1\n" + b"B" * 70000),
                              daemon=True)
    writer.start()
    child = BoundedConsole(read_end, timeout=60)
    assert child.expect([BEGIN, pexpect.EOF, pexpect.TIMEOUT]) == 0
    os.close(read_end)


def test_ssh_stderr_is_bounded():
    from harness.transport.ssh import MAX_STDERR, _tail

    buf = bytearray()
    for _ in range(100):
        buf = _tail(buf + b"E" * (1 << 16))
        assert len(buf) <= MAX_STDERR


# --- profile driver allow-list (issue 19 class 5) ---
# QEMU runs as root: a profile must never hand it a host device, descriptor, file, socket, chardev or
# netdev. Only drivers on the allow-list (harness/guest/drivers.py), and per driver only the listed
# properties with values of their type, pass the schema; checked against what real builds list.
def _device_help(argv: list[str], env: dict[str, str] | None = None) -> dict[str, str]:
    """`-device help` of a real build: every driver name and alias -> the name it stands for."""
    out = subprocess.run([*argv, "-device", "help"], capture_output=True, text=True, timeout=60, check=True,
                         env=env).stdout
    names: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith("name "):
            name = line.split('"')[1]
            names[name] = name
            if ', alias "' in line:
                names[line.split(', alias "')[1].split('"')[0]] = name
    return names


def _property_help(argv: tuple[str, ...], env: tuple[tuple[str, str], ...], driver: str) -> dict[str, str]:
    """`-device DRIVER,help` of a real build: property name -> QEMU's type (`bool`, `uint32`, `str`…)."""
    out = subprocess.run([*argv, "-device", f"{driver},help"], capture_output=True, text=True, timeout=60,
                         env=dict(env), check=False).stdout
    props = {}
    for line in out.splitlines()[1:]:
        token = line.split()[0] if line.strip() else ""
        if "=<" in token and token.endswith(">"):
            name, kind = token.split("=<", 1)
            props[name] = kind[:-1]
    return props


SYSTEM_DEVICES = _device_help(["qemu-system-x86_64"]) if shutil.which("qemu-system-x86_64") else {}
HOSTILE_PROPERTIES = ["fd", "vhostfd", "fds", "vhostfds", "ebpf-rss-fds", "chardev", "netdev", "drive", "file",
                      "filename", "logfile", "x-logfile", "romfile", "path", "sock_path", "socket", "host",
                      "hostbus", "hostaddr", "hostdevice", "sysfsdev", "pcap", "evdev", "memdev", "rng", "fsdev",
                      "tpmdev", "iothread", "audiodev", "id", "bus", "addr", "mac"]


def _qemu_class(qemu_type: str) -> str:
    """A QEMU property type as the allow-list's value types name it."""
    if re.fullmatch(r"u?int(8|16|32|64)?", qemu_type):
        return "int"
    return qemu_type


@functools.cache
def _trixie() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    from harness.qemu import resolve

    build = resolve("debian:trixie")
    return tuple(build.argv()), tuple(build.environ().items())


def _load_device(tmp_path: Path, body: str) -> Any:
    from harness.guest.profile import load_profile

    path = tmp_path / "p.toml"
    path.write_text(MINIMAL + "[[device]]\n" + body + "\n")
    return load_profile(str(path))


@pytest.mark.parametrize("driver", sorted(d for d in SYSTEM_DEVICES if d not in DRIVERS and d not in ALIASES))
def test_every_driver_qemu_knows_that_is_not_allowed_is_refused(tmp_path, driver):
    from harness.errors import QabiError
    from harness.guest.drivers import driver_rule

    assert driver_rule(driver) is None
    with pytest.raises(QabiError, match=rf"device 0: driver '{re.escape(driver)}' is not allowed in a profile: it "):
        _load_device(tmp_path, f'driver = "{driver}"')


def test_the_build_lists_drivers_and_aliases_and_every_allowed_alias_is_its_drivers():
    """The parametrized test above is not vacuous: QEMU lists hundreds of drivers, most refused; an
    alias of an allowed driver is allowed exactly when QEMU says it stands for that driver."""
    assert len(SYSTEM_DEVICES) > 300 and {"usb-host", "vfio-pci", "vhost-vsock-pci", "usb-redir"} <= set(SYSTEM_DEVICES)
    assert len([d for d in SYSTEM_DEVICES if d not in DRIVERS and d not in ALIASES]) > 200
    for alias, driver in ALIASES.items():
        assert driver in DRIVERS and SYSTEM_DEVICES.get(alias) == driver, alias
    for alias, driver in SYSTEM_DEVICES.items():
        if driver in DRIVERS and alias != driver:
            assert ALIASES.get(alias) == driver, alias


@pytest.mark.parametrize("driver,why", [
    ("usb-host", "claims a host USB device"), ("vfio-pci", "IOMMU group"), ("vfio-pci-nohotplug", "IOMMU group"),
    ("vhost-vsock-pci", "/dev/vhost-vsock"), ("vhost-scsi-pci", "vhost-scsi"),
    ("vhost-user-blk-pci", "vhost-user backend over a host socket"), ("usb-redir", "chardev"),
    ("ccid-card-passthru", "smart-card reader"), ("virtio-input-host-pci", "evdev"),
    ("scsi-generic", "/dev/sg"), ("virtio-9p-pci", "host directory"), ("u2f-passthru", "hidraw"),
    ("virtio-gpu-gl-pci", "not on the allow-list"),
])
def test_host_device_drivers_are_refused_naming_why(tmp_path, driver, why):
    from harness.errors import QabiError

    with pytest.raises(QabiError, match=rf"driver '{driver}' is not allowed in a profile: it .*{re.escape(why)}"):
        _load_device(tmp_path, f'driver = "{driver}"')


@pytest.mark.parametrize("name", HOSTILE_PROPERTIES)
def test_host_reaching_properties_are_refused_on_every_allowed_driver(tmp_path, name):
    from harness.errors import QabiError

    assert len(DRIVERS) > 60
    for driver in DRIVERS:
        for value in ("/dev/vhost-vsock", 3) if name.endswith(("fd", "fds")) else ("/dev/vhost-vsock",):
            with pytest.raises(QabiError, match=rf"property '{re.escape(name)}' is not allowed on {driver}"):
                _load_device(tmp_path, f'driver = "{driver}"\nprops = {{ "{name}" = {json.dumps(value)} }}')


def test_romfile_may_only_be_empty(tmp_path):
    """romfile names a host file: "" (no option ROM) is the only value, on every PCI driver."""
    from harness.errors import QabiError

    pci = [d for d, rule in DRIVERS.items() if "pci" in rule.groups]
    assert len(pci) > 40
    for driver in pci:
        device = _load_device(tmp_path, f'driver = "{driver}"\nprops = {{ romfile = "" }}').devices[0]
        assert device.props == (("romfile", ""),)
        with pytest.raises(QabiError, match="names a host file"):
            _load_device(tmp_path, f'driver = "{driver}"\nprops = {{ romfile = "efi-e1000.rom" }}')


def _sample_body(driver: str) -> tuple[str, dict[str, str]]:
    """A device of `driver` with every property of its allow-list set to its type's sample value, and
    every launcher key it takes; the option text each property should become."""
    rule = DRIVERS[driver]
    samples = {"mac": '"52:54:00:aa:00:01"', "disk": '"1M"', "cdrom": "true", "audio": "true"}
    lines = [f'driver = "{driver}"', *(f"{key} = {samples[key]}" for key in rule.keys)]
    props = rule.properties()
    lines.append("props = { " + ", ".join(f'"{k}" = {json.dumps(t.sample)}' for k, t in props.items()) + " }")
    expected = {k: t.parse(t.sample) for k, t in props.items()}
    return "\n".join(lines), {k: v for k, v in expected.items() if v is not None}


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_every_allowed_property_validates_with_a_sample_value(tmp_path, driver):
    from harness.errors import QabiError

    body, expected = _sample_body(driver)
    device = _load_device(tmp_path, body).devices[0]
    assert dict(device.props) == expected and len(expected) == len(DRIVERS[driver].properties())
    for key, kind in DRIVERS[driver].properties().items():   # and a value of another shape is refused
        wrong = "a,b=/etc/passwd" if kind.qemu != "str" else ["x"]
        with pytest.raises(QabiError, match=rf"property '{re.escape(key)}' (of {driver} must be|is not allowed)"):
            _load_device(tmp_path, f'driver = "{driver}"\nprops = {{ "{key}" = {json.dumps(wrong)} }}')


def test_no_allowed_property_has_a_name_the_refusal_table_refuses():
    """The two tables agree: what the allow-list admits is never a name refused on every driver, but
    romfile, whose only value is "" (no file)."""
    from harness.guest.drivers import property_refusal

    for driver, rule in DRIVERS.items():
        for key, kind in rule.properties().items():
            if property_refusal(key):
                assert key == "romfile" and kind.parse("") == "" and kind.parse("a") is None, (driver, key)


@pytest.mark.skipif(not SYSTEM_DEVICES, reason="needs the host's qemu-system-x86_64")
@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_the_allow_list_matches_what_real_builds_list(tmp_path, driver):
    """Every allowed property exists on a real build (the system 7.2 build, or trixie's 10.0 for newer
    ones) with a type of its value type's kind (never a link, a child object or a list), and every
    other property QEMU lists for the driver is refused by the schema."""
    from harness.errors import QabiError

    system = _property_help(("qemu-system-x86_64",), tuple(os.environ.items()), driver)
    known = dict(system)
    allowed = DRIVERS[driver].properties()
    if driver not in SYSTEM_DEVICES or set(allowed) - set(system):
        known = {**_property_help(*_trixie(), driver), **system}
    for key, kind in allowed.items():
        assert key in known, f"{driver}: {key} is on no build"
        assert _qemu_class(known[key]) == kind.qemu, (driver, key, known[key], kind.qemu)
    for key, qemu_type in known.items():
        if key in allowed:
            continue
        value = True if qemu_type == "bool" else 1 if _qemu_class(qemu_type) == "int" else "x"
        with pytest.raises(QabiError, match=rf"property (name '{re.escape(key)}' is not valid|'{re.escape(key)}' is "
                                            rf"not allowed on {driver})"):
            _load_device(tmp_path, f'driver = "{driver}"\nprops = {{ "{key}" = {json.dumps(value)} }}')


@pytest.mark.parametrize("key,driver", [("mac", "VGA"), ("disk", "e1000"), ("cdrom", "ide-hd"),
                                        ("audio", "qemu-xhci")])
def test_launcher_keys_apply_only_to_the_drivers_that_take_them(tmp_path, key, driver):
    from harness.errors import QabiError

    value = {"mac": '"52:54:00:aa:00:01"', "disk": '"1M"'}.get(key, "true")
    with pytest.raises(QabiError, match=rf"{key} = … does not apply to {driver}"):
        _load_device(tmp_path, f'driver = "{driver}"\n{key} = {value}')


def test_shipped_profiles_validate_and_capture(tmp_path):
    from harness.guest.drivers import driver_rule
    from harness.guest.profile import load_profile, profile_names

    for name in profile_names():
        assert all(driver_rule(d.driver) for d in load_profile(name).devices), name
    done = run_qabi("capture", "--qemu", "system", "--machine", "pc-q35-7.2", "--guest", "windows",
                    "--transport", "firmware", "-o", str(tmp_path / "cap"))
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "cap" / "manifest.json").read_text())
    argv = " ".join(manifest["argv"])
    assert "qxl-vga" in argv and "e1000e" in argv and "ich9-intel-hda" in argv


def test_readme_documents_the_allow_list_exactly():
    """The README's "Guest profiles" section carries the allow-list between `<!-- drivers:begin -->`
    and `<!-- drivers:end -->`, exactly `drivers_markdown()` (regenerate: python3 tests/regen_readme.py)."""
    from harness.guest.drivers import drivers_markdown

    text = (REPO / "README.md").read_text()
    profiles = text.split("## Guest profiles", 1)[1].split("\n## ", 1)[0]
    block = profiles.split("<!-- drivers:begin -->", 1)[1].split("<!-- drivers:end -->", 1)[0]
    assert block.strip() == drivers_markdown().strip()
    refusals = text.split("## What qabi refuses, and how it fails", 1)[1].split("\n## ", 1)[0]
    assert "usb-host" in refusals and "vfio-pci" in refusals and "not on the allow-list" in refusals
