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
    assert "build.json: not a baseline's build record" in line


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


# --- writers and readers (issue 19 class 4) ---
# Every output option goes through the one writer (harness/cache.py `atomic_write_bytes`): a symlink is
# followed to the file it names (or refused), a device or FIFO is written through, never replaced, a
# directory is refused; report folders are new, empty or qabi's own and never an input. Every input
# goes through the one reader (`read_input`): regular files only, bounded, never a hang.
import stat as _stat

from harness.drift.model import Comparison
from harness.report import Run as _Run
from harness.report import RunSet as _RunSet
from harness.report import ShardInfo as _ShardInfo
from harness.report.html import write_reports as _write_reports
from harness.report.jsonreport import REPORT_MARKER

_SIDE = {"spec": "debian:trixie", "sha256": "ab" * 32, "version": "10.0.13"}
_PLANNED = (("pc-i440fx-7.2", "minimal"), ("pc-q35-7.2", "minimal"))
_FW_CHECK = ("check", "--old", "system", "--new", "system", "--machine", "pc-q35-5.2", "--guest", "minimal",
             "--transport", "firmware", "--waivers", "/dev/null", "--timeout", "60")


@pytest.fixture(scope="module")
def io_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Inputs that need no capture: a fingerprint of the committed capture, a diff report of it, and
    two shard reports of one check (written by the one report writer)."""
    root = tmp_path_factory.mktemp("io")
    fp = root / "fp.json"
    assert run_qabi("fingerprint", str(CAPTURE), "-o", str(fp)).returncode == 0
    report = root / "diff.json"
    assert run_qabi("diff", str(fp), str(fp), "--waivers", "/dev/null", "--json", str(report)).returncode == 0
    shards = []
    for i, case in enumerate(_PLANNED, 1):
        runset = _RunSet((_Run(*case, _SIDE, _SIDE, comparison=Comparison(())),),
                         shard=_ShardInfo(i, 2, _PLANNED))
        shards.append(_write_reports(runset, root / f"shard{i}")[0])
    return {"fp": fp, "report": report, "shard1": shards[0], "shard2": shards[1], "empty": root / "empty-cache"}


# file outputs: argv with T for the target, exit statuses that mean "written", the output's first bytes
FILE_WRITERS = {
    "diff --json": (lambda i: ("diff", str(i["fp"]), str(i["fp"]), "--waivers", "/dev/null", "--json", "T"), {0}, b"{"),
    "fingerprint -o": (lambda i: ("fingerprint", str(CAPTURE), "-o", "T"), {0}, b"{"),
    "report -o": (lambda i: ("report", str(i["report"]), "-o", "T"), {0}, b"<!"),
    "cache export": (lambda i: ("cache", "export", "T"), {0}, b""),
    "check --json": (lambda i: (*_FW_CHECK, "--json", "T"), {0, 1}, b"{"),
}
# folder outputs
DIR_WRITERS = {
    "check --report": lambda i: (*_FW_CHECK, "--report", "T"),
    "matrix -o": lambda i: ("matrix", "system", "system", "--machine", "pc-q35-5.2", "--guest", "minimal",
                            "--transport", "firmware", "--waivers", "/dev/null", "-o", "T"),
    "report --merge -o": lambda i: ("report", "--merge", str(i["shard1"]), str(i["shard2"]), "-o", "T"),
}


def _qabi_io(argv: tuple[str, ...], target: Path | str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    cache = tmp_path / "private-cache"   # cache export reads the cache: a private, empty one
    env = {"XDG_CACHE_HOME": str(cache)} if argv[:2] == ("cache", "export") else None
    return run_qabi(*(str(target) if a == "T" else a for a in argv), env=env, timeout=300)


def _char_device(tmp_path: Path) -> Path:
    """A character device node of our own (the null device's numbers), so that a regression replaces
    this node, never the system's /dev/null."""
    if os.geteuid() != 0:
        pytest.skip("needs root (mknod)")
    node = tmp_path / "null"
    os.mknod(node, 0o666 | _stat.S_IFCHR, os.makedev(1, 3))
    return node


def _fifo_reader(path: Path) -> tuple[threading.Thread, list[bytes]]:
    got: list[bytes] = []

    def read() -> None:
        with open(path, "rb") as handle:
            got.append(handle.read())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, got


@pytest.mark.parametrize("writer", sorted(FILE_WRITERS))
@pytest.mark.parametrize("kind", ["symlink to a file", "dangling symlink", "dangling into nowhere", "symlink loop",
                                  "FIFO", "character device", "directory", "user's file"])
def test_every_file_writer_obeys_the_output_rule(tmp_path, io_inputs, writer, kind):
    argv_of, ok, head = FILE_WRITERS[writer]
    argv = argv_of(io_inputs)
    real, out = tmp_path / "real.out", tmp_path / "out"
    if kind == "symlink to a file":
        real.write_bytes(b"old")
        out.symlink_to(real)
    elif kind == "dangling symlink":
        out.symlink_to(real)
    elif kind == "dangling into nowhere":
        out.symlink_to(tmp_path / "no" / "such" / "dir" / "x")
    elif kind == "symlink loop":
        out.symlink_to(tmp_path / "loop")
        (tmp_path / "loop").symlink_to(out)
    elif kind == "FIFO":
        os.mkfifo(out)
        reader, got = _fifo_reader(out)
    elif kind == "character device":
        out = _char_device(tmp_path)
    elif kind == "directory":
        out.mkdir()
        (out / "keep").write_text("mine")
    else:
        out.write_bytes(b"old")
    done = _qabi_io(argv, out, tmp_path)
    if kind in ("dangling into nowhere", "symlink loop", "directory"):
        _one_line_exit_2(done)
        assert out.is_symlink() or (out / "keep").read_text() == "mine"
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []   # no temp file left
        return
    assert done.returncode in ok, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    if kind in ("symlink to a file", "dangling symlink"):
        assert out.is_symlink() and os.readlink(out) == str(real)       # the link kept, the file it names written
        written = real.read_bytes()
    elif kind == "FIFO":
        reader.join(30)
        assert _stat.S_ISFIFO(os.lstat(out).st_mode) and got, "the FIFO was replaced or never written"
        written = got[0]
    elif kind == "character device":
        assert _stat.S_ISCHR(os.lstat(out).st_mode), "the device node was replaced"
        return
    else:
        assert _stat.S_ISREG(os.lstat(out).st_mode)
        written = out.read_bytes()
    assert written != b"old" and written.startswith(head) and len(written) > 100


@pytest.mark.parametrize("writer", sorted(FILE_WRITERS))
def test_dash_is_standard_output(tmp_path, io_inputs, writer):
    argv_of, ok, head = FILE_WRITERS[writer]
    argv = argv_of(io_inputs)
    done = subprocess.run([sys.executable, "-m", "harness.cli", *(a if a != "T" else "-" for a in argv)],
                          capture_output=True, timeout=300, cwd=tmp_path, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path / "c")}
                          if writer == "cache export" else {**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode in ok, done.stderr[-2000:]
    assert not (tmp_path / "-").exists()
    assert head in done.stdout


@pytest.mark.parametrize("writer", sorted(DIR_WRITERS))
@pytest.mark.parametrize("kind", ["symlink to a file", "dangling symlink", "FIFO", "character device",
                                  "user's directory", "user's file", "a named file is a link"])
def test_every_report_folder_writer_refuses_what_is_not_its_own(tmp_path, io_inputs, writer, kind):
    out = tmp_path / "out"
    victim = tmp_path / "victim"
    victim.write_text("mine")
    if kind == "symlink to a file":
        out.symlink_to(victim)
    elif kind == "dangling symlink":
        out.symlink_to(tmp_path / "nowhere")
    elif kind == "FIFO":
        os.mkfifo(out)
    elif kind == "character device":
        out = _char_device(tmp_path)
    elif kind == "user's directory":
        out.mkdir()
        (out / "index.html").write_text("mine")
        victim = out / "index.html"
    elif kind == "user's file":
        out = victim
    else:   # a folder qabi made, whose index.html someone turned into a link to their file
        from harness.report.jsonreport import MARKER_TEXT

        out.mkdir()
        (out / REPORT_MARKER).write_text(MARKER_TEXT)
        (out / "index.html").symlink_to(victim)
    kind_before = os.lstat(out).st_mode
    _one_line_exit_2(_qabi_io(DIR_WRITERS[writer](io_inputs), out, tmp_path))
    assert victim.read_text() == "mine" and os.lstat(out).st_mode == kind_before


def test_report_folders_are_new_empty_or_qabis_own_and_never_an_input(tmp_path, io_inputs):
    shards = (str(io_inputs["shard1"]), str(io_inputs["shard2"]))
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (tmp_path / "new" / "deeper", empty, empty):   # new, empty, then qabi's own again
        done = run_qabi("report", "--merge", *shards, "-o", str(target))
        assert done.returncode == 0, done.stderr
        assert (target / REPORT_MARKER).is_file() and json.loads((target / "qabi.json").read_text())["runs"]
    before = io_inputs["shard1"].read_bytes()
    # the output folder is one input's folder: refused by inode, not by spelling
    (tmp_path / "alias").symlink_to(io_inputs["shard1"].parent)
    for out in (io_inputs["shard1"].parent, tmp_path / "alias"):
        line = _one_line_exit_2(run_qabi("report", "--merge", *shards, "-o", str(out)))
        assert "is the input" in line
    assert io_inputs["shard1"].read_bytes() == before
    # the HTML of a report written over its own JSON input, through a hard link
    os.link(io_inputs["report"], tmp_path / "hard.json")
    assert "is the input" in _one_line_exit_2(run_qabi("report", str(io_inputs["report"]), "-o",
                                                         str(tmp_path / "hard.json")))


# -- readers: every input against what is not a regular file, too big or too deep ------------------
READERS = {
    "merge input": lambda i, x, t: ("report", "--merge", str(x), str(i["shard2"]), "-o", str(t / "m")),
    "waiver file": lambda i, x, t: ("diff", str(i["fp"]), str(i["fp"]), "--waivers", str(x)),
    "profile": lambda i, x, t: ("check", "--old", "system", "--new", "system", "--guest", str(x),
                                "--transport", "firmware"),
    "config": lambda i, x, t: ("check", "--old", "system", "--new", "system", "--guest", "minimal",
                               "--machine", "pc-q35-5.2", "--transport", "firmware"),
    "report": lambda i, x, t: ("report", str(x), "-o", str(t / "r.html")),
    "fingerprint": lambda i, x, t: ("diff", str(x), str(i["fp"]), "--waivers", "/dev/null"),
}
_TOML = {"waiver file", "profile", "config"}


def _bad_input(tmp_path: Path, reader: str, kind: str) -> Path:
    path = tmp_path / ("qabi" if reader == "config" else "in") / ("config.toml" if reader == "config" else
                                                                  "x.toml" if reader in _TOML else "x.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "/dev/zero":
        if reader == "config" or reader == "profile":   # a fixed name: a link is the way to give /dev/zero
            path.symlink_to("/dev/zero")
            return path
        return Path("/dev/zero")
    if kind == "symlink to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "FIFO with no writer":
        os.mkfifo(path)
    elif kind == "oversized":
        from harness.cache import JSON_LIMIT, TOML_LIMIT

        with open(path, "wb") as handle:     # sparse: over the bound without using the disk
            handle.truncate((TOML_LIMIT if reader in _TOML else JSON_LIMIT) + 1)
    else:   # deeply nested
        path.write_text("a = " + "[" * 50_000 + "]" * 50_000 + "\n" if reader in _TOML
                        else "[" * 200_000 + "]" * 200_000)
    return path


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("kind", ["/dev/zero", "symlink to /dev/zero", "FIFO with no writer", "oversized",
                                  "deeply nested"])
def test_every_reader_refuses_what_is_not_a_bounded_regular_file(tmp_path, io_inputs, reader, kind):
    bad = _bad_input(tmp_path, reader, kind)
    env = {"XDG_CONFIG_HOME": str(tmp_path)} if reader == "config" else None
    argv = READERS[reader](io_inputs, bad, tmp_path)
    try:
        done = run_qabi(*argv, env=env, timeout=60)   # a hang is a failure, not a wait
    except subprocess.TimeoutExpired:
        pytest.fail(f"{reader} on {kind} hung")
    line = _one_line_exit_2(done)
    expected = {"/dev/zero": "not a regular file", "symlink to /dev/zero": "not a regular file",
                "FIFO with no writer": "not a regular file", "oversized": "over ",
                "deeply nested": "nested too deeply"}[kind]
    assert expected in line, line


# -- waivers: a catch-all by what it matches; globs that cannot blow up -------------------------------
@pytest.mark.parametrize("subject", ["*", "**", "{*}", "{,*}", "?*", "{*,x}", "{{*}}", "{p,a,c,s,e,m,v,r,f,u,h}*", "*{,}"])
def test_a_catch_all_is_decided_by_what_the_glob_matches(subject):
    from harness.categories import names
    from harness.drift.waivers import parse_waivers
    from harness.errors import QabiError

    every = ",".join(names())      # every category by name: the category glob matches all of them
    text = f'[[waiver]]\ncategory = "{{{every}}}"\nsubject = "{subject}"\n' \
           'path = "{*}"\nreason = "r"\n'
    with pytest.raises(QabiError, match="matches every drift"):
        parse_waivers(text)
    assert len(parse_waivers(text + 'scope = "all"\n')) == 1
    assert len(parse_waivers(text.replace('path = "{*}"', 'path = "revision"'))) == 1   # narrowed: not a catch-all


@pytest.mark.parametrize("glob", ["{a," * 40 + "b" + "}" * 40, "{a,b}" * 300, "x" * 5000],
                         ids=["nested", "repeated", "long"])
def test_oversized_or_deeply_nested_brace_globs_are_one_line(tmp_path, io_inputs, glob):
    waivers = tmp_path / "w.toml"
    waivers.write_text(f'[[waiver]]\ncategory = "pci"\nsubject = "{glob}"\nreason = "r"\n')
    started = time.monotonic()
    line = _one_line_exit_2(run_qabi("diff", str(io_inputs["fp"]), str(io_inputs["fp"]), "--waivers", str(waivers),
                                     timeout=60))
    assert "glob" in line and time.monotonic() - started < 30


@pytest.mark.parametrize("glob,text", [("*a" * 12 + "b", "a" * 5000), ("{a,a}" * 100 + "b", "a" * 100 + "c"),
                                       ("{*,*}" * 8 + "b", "a" * 5000)])
def test_glob_matching_is_linear_not_backtracking(glob, text):
    from harness.drift.glob import glob_match

    started = time.monotonic()
    assert not glob_match(glob, text) and glob_match(glob, text[:-1] + "b")
    assert time.monotonic() - started < 2.0


# -- a signal while the error line is written ------------------------------------------------------
_SIGNAL_MID_LINE = """
import os, sys
from harness import cli
real_write = os.write
def write(fd, data):    # the signal arrives while the error line is being written
    os.kill(os.getpid(), int(sys.argv[1]))
    return real_write(fd, data)
cli.os.write = write
sys.exit(cli.main(["report", "/nonexistent.json"]))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_during_the_error_line_is_still_one_line_and_exit_2(sig):
    """The error line is written with signals held: a signal arriving while it is printed ends the
    run after that one line, exit 2, never a traceback."""
    done = subprocess.run([sys.executable, "-c", _SIGNAL_MID_LINE, str(int(sig))], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    line = _one_line_exit_2(done)
    assert done.stderr.count("\n") == 1 and "nonexistent.json" in line, done.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_qemu_is_killed_after_an_error_is_one_line(sig):
    """The one signal lands in the cleanup after the error line (kill_all): still one line, exit 2."""
    script = _SIGNAL_MID_LINE.replace("cli.os.write = write", "import harness.qemu.process as p\n"
                                      "real_kill, sent = p.kill_all, []\n"
                                      "p.kill_all = lambda: (sent or (sent.append(1), os.kill(os.getpid(), "
                                      "int(sys.argv[1]))), real_kill())")
    done = subprocess.run([sys.executable, "-c", script, str(int(sig))], cwd=REPO, capture_output=True, text=True,
                          timeout=60, check=False)
    _one_line_exit_2(done)
    assert done.stderr.count("\n") == 1, done.stderr


# --- capture provenance and archives (issue 19 class 2) ---
# A capture proves what it is: its cache key is recomputed from the inputs its manifest records, on
# import and on every reuse. Real captures over the firmware transport of two builds that differ
# (the host's `system` QEMU and debian:bookworm: other firmware dirs), in a private capture cache.
FW_RUN = ("--machine", "pc-i440fx-7.2", "--transport", "firmware")


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private cache home holding real captures of `minimal` and of `my_guest` (a profile whose
    name has a `_`) by the `system` build and by debian:bookworm."""
    from conftest import private_captures

    root = tmp_path_factory.mktemp("two_builds")
    guest = _profile(root, "", name="my_guest")
    home = root / "home"
    done = run_qabi("check", "--old", "system", "--new", "debian:bookworm", *FW_RUN, "--guest", "minimal",
                    "--guest", str(guest), env=private_captures(home))
    assert done.returncode in (0, 1), done.stderr
    assert len(_captures(home)) == 4, _captures(home)
    return home


def _captures(home: Path) -> dict[str, Path]:
    root = home / "qabi" / "captures"
    return {p.name: p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}


def _copy_of(home: Path, tmp_path: Path, name: str = "copy") -> tuple[Path, dict[str, str]]:
    from conftest import private_captures

    mine = tmp_path / name
    env = private_captures(mine)
    for folder in _captures(home).values():
        shutil.copytree(folder, mine / "qabi" / "captures" / folder.name)
    return mine, env


def _of_build(home: Path, guest: str, debian: bool) -> Path:
    """The capture of `guest` by debian:bookworm (`debian`) or by the system build."""
    (found,) = [p for p in _captures(home).values() if p.name.split("_", 1)[1].rsplit("_", 1)[0] == guest
                and (json.loads((p / "manifest.json").read_text())["build"]["kind"] == "debian") == debian]
    return found


def test_a_capture_renamed_to_another_builds_key_is_recaptured_on_reuse(two_builds, tmp_path):
    home, env = _copy_of(two_builds, tmp_path)
    system, debian = _of_build(home, "minimal", False), _of_build(home, "minimal", True)
    assert system.name != debian.name and system.name.rsplit("_", 1)[0] == debian.name.rsplit("_", 1)[0]
    shutil.rmtree(debian)
    system.rename(debian)          # the system build's capture under debian:bookworm's key
    done = run_qabi("check", "--old", "debian:bookworm", "--new", "debian:bookworm", *FW_RUN, "--guest", "minimal",
                    env=env)
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if line.startswith("qabi: note:")]
    assert len(notes) == 1 and debian.name in notes[0] and "another key" in notes[0], done.stderr
    recaptured = json.loads((debian / "manifest.json").read_text())
    assert recaptured["build"]["kind"] == "debian" and recaptured["build"]["firmware_dirs"]
    again = run_qabi("check", "--old", "debian:bookworm", "--new", "debian:bookworm", *FW_RUN, "--guest", "minimal",
                     env=env)
    assert again.returncode == 0 and "qabi: note:" not in again.stderr, again.stderr   # now it proves its key


def _tar_members(path: Path) -> list[tuple[Any, bytes | None]]:
    import tarfile

    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]  # type: ignore[union-attr]


def _write_tar(path: Path, members: list[tuple[Any, bytes | None]], mode: str = "w:gz") -> Path:
    import io
    import tarfile

    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_a_capture_filed_under_another_builds_key_in_a_tarball_is_refused_on_import(two_builds, tmp_path):
    home, env = _copy_of(two_builds, tmp_path)
    system, debian = _of_build(home, "minimal", False), _of_build(home, "minimal", True)
    tarball = tmp_path / "all.tar.gz"
    exported = run_qabi("cache", "export", str(tarball), env=env)
    assert exported.returncode == 0 and "4 captures exported" in exported.stdout, exported.stderr
    members = []
    for info, data in _tar_members(tarball):   # debian's capture dropped, the system's renamed to its key
        top, _, rest = info.name.partition("/")
        if top == debian.name:
            continue
        if top == system.name:
            info.name = f"{debian.name}/{rest}" if rest else debian.name
        members.append((info, data))
    forged = _write_tar(tmp_path / "forged.tar.gz", members)
    from conftest import private_captures

    target = tmp_path / "b"
    done = run_qabi("cache", "import", str(forged), env=private_captures(target))
    line = _one_line_exit_2(done)
    assert debian.name in line and "another key" in line and "2 captures imported" in line, line
    assert debian.name not in _captures(target) and len(_captures(target)) == 2


def test_every_recorded_input_decides_the_key(two_builds, tmp_path):
    from harness.capture import INPUT_FIELDS, check_provenance, inputs_key, load_capture, manifest_key
    from harness.errors import CaptureError

    source = _of_build(two_builds, "minimal", True)
    cap = load_capture(source)
    check_provenance(cap)
    inputs = cap.manifest["inputs"]
    assert inputs_key(inputs) == manifest_key(cap) == source.name.rsplit("_", 1)[1]
    assert sorted(inputs) == sorted(INPUT_FIELDS) and inputs["firmware"]
    mirror = {"qabi": ("qabi_version",), "build": ("build", "sha256"), "machine": ("machine", "resolved"),
              "accel": ("accel",), "transport": ("transport",), "image": ("image", "sha256")}
    for field in INPUT_FIELDS:
        altered = json.loads(json.dumps(cap.manifest))
        if field == "firmware":
            altered["inputs"]["firmware"][0]["sha256"] = "0" * 64
        else:
            altered["inputs"][field] = "x" + str(altered["inputs"][field])
        assert inputs_key(altered["inputs"]) != inputs_key(inputs), field
        forged = type(cap)(cap.path, altered)
        with pytest.raises(CaptureError):     # the folder's key is not the altered inputs' key
            check_provenance(forged)
        with pytest.raises(CaptureError, match="other inputs"):     # nor what this run would launch
            check_provenance(cap, altered["inputs"])
        if field in mirror:   # the manifest's own record of what ran, changed alone, disagrees with its inputs
            lie = json.loads(json.dumps(cap.manifest))
            *where, last = mirror[field]
            node = lie
            for part in where:
                node = node[part]
            node[last] = "x" + str(node[last])
            with pytest.raises(CaptureError, match="records the input"):
                manifest_key(type(cap)(cap.path, lie))


def test_export_takes_any_profile_name_and_names_and_skips_a_corrupted_capture(two_builds, tmp_path):
    from conftest import private_captures

    home, env = _copy_of(two_builds, tmp_path)
    underscored = _of_build(home, "my_guest", True)
    corrupted = _of_build(home, "minimal", False)
    raw = next(p for p in sorted((corrupted / "raw").rglob("*")) if p.is_file())
    raw.write_bytes(raw.read_bytes() + b"\0")
    tarball = tmp_path / "out.tar.gz"
    line = _one_line_exit_2(run_qabi("cache", "export", str(tarball), env=env))
    assert "3 captures exported" in line and corrupted.name in line and "does not match its sha256" in line, line
    tops = {info.name.split("/")[0] for info, _data in _tar_members(tarball)}
    assert tops == set(_captures(home)) - {corrupted.name} and underscored.name in tops
    target = tmp_path / "b"
    done = run_qabi("cache", "import", str(tarball), env=private_captures(target))
    assert done.returncode == 0 and "3 captures imported" in done.stdout, done.stderr
    assert underscored.name in _captures(target)
    again = run_qabi("check", "--old", "debian:bookworm", "--new", "debian:bookworm", *FW_RUN, "--guest",
                     str(two_builds.parent / "my_guest.toml"), env={"XDG_CACHE_HOME": str(target)})
    assert again.returncode == 0 and "qabi: note:" not in again.stderr, again.stderr
    assert set(_captures(target)) == tops      # the imported `_` capture was reused, nothing captured


@pytest.fixture(scope="module")
def exported(two_builds: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`qabi cache export` of the two builds' captures."""
    tarball = tmp_path_factory.mktemp("exported") / "export.tar.gz"
    done = run_qabi("cache", "export", str(tarball), env={"XDG_CACHE_HOME": str(two_builds)})
    assert done.returncode == 0, done.stderr
    return tarball


@pytest.mark.parametrize("mode,suffix", [("w:gz", "tar.gz"), ("w:xz", "tar.xz"), ("w", "tar")])
def test_a_truncated_archive_is_one_line_and_adds_nothing(exported, tmp_path, monkeypatch, mode, suffix):
    from conftest import private_captures

    from harness.errors import QabiError
    from harness.matrix.cachefile import import_captures

    whole = _write_tar(tmp_path / f"whole.{suffix}", _tar_members(exported), mode).read_bytes()
    for cut in (len(whole) // 2, 512 * (len(whole) // 1024), 100):   # mid-member, at a block, in a header
        short = tmp_path / f"short{cut}.{suffix}"
        short.write_bytes(whole[:cut])
        env = private_captures(tmp_path / f"b{cut}")
        if cut == 100:   # the CLI's contract once, the reader's refusal at every cut
            _one_line_exit_2(run_qabi("cache", "import", str(short), env=env))
        monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
        with pytest.raises(QabiError, match="truncated|not a tar|checksum"):
            import_captures(short)
        assert list((tmp_path / f"b{cut}" / "qabi" / "captures").iterdir()) == []


def _bounded_qabi(*args: str, env: dict[str, str], memory: int = 600 << 20) -> tuple[subprocess.CompletedProcess[str], float]:
    """The CLI under an address-space limit: a reader that held a bomb in memory would fail."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120, preexec_fn=limit, check=False)
    return done, time.monotonic() - started


def _header(name: str, size: int = 0, kind: bytes = b"0") -> bytes:
    import tarfile

    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(format=tarfile.USTAR_FORMAT if len(name) < 100 else tarfile.GNU_FORMAT)


CAP_NAME = "pc-q35-7.2_my_guest_0123456789abcdef01234567"


def _bomb(kind: str) -> bytes:
    """A small archive that, read naively, costs hundreds of MB or more."""
    if kind == "members":        # 10^5 empty members (a 520 KB file of these reached 565 MB)
        return _header(f"{CAP_NAME}/raw/x") * 100_000 + bytes(1024)
    if kind == "pax":            # a pax header declaring 100 MB, its body zeros
        return _header("pax", 100 << 20, b"x") + bytes(100 << 20)
    if kind == "long-name":      # a GNU long name of 10 MB
        return _header("././@LongLink", 10 << 20, b"L") + b"a" * (10 << 20)
    if kind == "huge-member":    # a member declaring 3 GiB
        return _header(f"{CAP_NAME}/console.log", 3 << 30)
    # a 5000-byte name in a pax header (under the header bound, over the name bound)
    record = f"path={CAP_NAME}/raw/{'n' * 5000}\n"
    length = len(record) + 5
    record = f"{length} {record}"
    body = record.encode().ljust(-(-len(record) // 512) * 512, b"\0")
    return _header("pax", len(record), b"x") + body + _header("short") + bytes(1024)


@pytest.mark.parametrize("kind,message", [
    ("members", "more than 50000 members"), ("pax", "a pax header of 104857600 bytes"),
    ("long-name", "a long-name header of 10485760 bytes"), ("huge-member", "has 3221225472 bytes"),
    ("long-path", "a member name over 1024 bytes"),
])
def test_tar_header_bombs_are_refused_in_bounded_memory_and_time(tmp_path, kind, message):
    import gzip

    from conftest import private_captures

    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(gzip.compress(_bomb(kind), 1))
    assert bomb.stat().st_size < 600 << 10
    done, seconds = _bounded_qabi("cache", "import", str(bomb), env=private_captures(tmp_path / "b"))
    line = _one_line_exit_2(done)
    assert message in line and seconds < 30, (line, seconds)
    assert list((tmp_path / "b" / "qabi" / "captures").iterdir()) == []


BASELINE = next(p for p in sorted((REPO / "fingerprints").iterdir()) if p.name.startswith("debian-bookworm-"))


def _baseline_copy(tmp_path: Path) -> Path:
    """A copy of the committed bookworm baseline with one recording: pc-q35-7.2/minimal."""
    base = tmp_path / BASELINE.name
    shutil.copytree(BASELINE / "pc-q35-7.2" / "minimal", base / "pc-q35-7.2" / "minimal")
    shutil.copy2(BASELINE / "build.json", base / "build.json")
    return base


def _check_baseline(base: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return run_qabi("check", "--old", str(base), "--new", str(BASELINE), "--machine", "pc-q35-7.2", "--guest", "minimal",
                    env={"XDG_CACHE_HOME": str(tmp_path / "cache")})


def test_an_xz_bomb_in_a_baseline_is_refused_in_bounded_memory_and_time(tmp_path):
    import lzma

    base = _baseline_copy(tmp_path)
    squeeze = lzma.LZMACompressor(preset=0)
    parts = []
    for index in range(6):   # six 15 MiB members of zeros: each under the member bound, 90 MiB in all
        parts.append(squeeze.compress(_header(f"raw/bomb{index}", 15 << 20)))
        parts += [squeeze.compress(bytes(1 << 20)) for _ in range(15)]
    parts += [squeeze.compress(bytes(1024)), squeeze.flush()]
    (base / "pc-q35-7.2" / "minimal" / "raw.tar.xz").write_bytes(b"".join(parts))
    assert (base / "pc-q35-7.2" / "minimal" / "raw.tar.xz").stat().st_size < 1 << 20
    done, seconds = _bounded_qabi("check", "--old", str(base), "--new", str(BASELINE), "--machine", "pc-q35-7.2",
                                  "--guest", "minimal", env={"XDG_CACHE_HOME": str(tmp_path / "cache")},
                                  memory=600 << 20)
    line = _one_line_exit_2(done)
    assert "unpacks to more than 67108864 bytes" in line and seconds < 30, (line, seconds)


@pytest.mark.parametrize("edit,message", [
    (lambda b: b.update(sha256="0" * 64), "a capture of another build (sha256"),
    (lambda b: b.update(version="10.0.13"), "a capture of another build (version"),
    (lambda b: b.pop("spec"), "no valid build.spec"),
    (lambda b: b.update(sha256="not a hash"), "build.sha256 is not a sha256"),
])
def test_a_baseline_recording_must_be_of_the_build_its_build_json_names(tmp_path, edit, message):
    base = _baseline_copy(tmp_path)
    data = json.loads((base / "build.json").read_text())
    edit(data["build"])
    (base / "build.json").write_text(json.dumps(data))
    assert message in _one_line_exit_2(_check_baseline(base, tmp_path))


def test_a_baseline_recording_filed_under_another_machine_or_profile_is_refused(tmp_path):
    base = _baseline_copy(tmp_path)
    (base / "pc-q35-7.2" / "minimal").rename(base / "pc-q35-7.2" / "windows")
    shutil.copytree(BASELINE / "pc-i440fx-7.2" / "minimal", base / "pc-q35-7.2" / "minimal")
    line = _one_line_exit_2(_check_baseline(base, tmp_path))
    assert "a capture of pc-i440fx-7.2/minimal filed as pc-q35-7.2/minimal" in line, line
    assert _check_baseline(_baseline_copy(tmp_path / "good"), tmp_path).returncode in (0, 1)   # the untouched copy


def test_a_no_reuse_capture_stopped_by_sigterm_or_sigkill_leaves_no_fresh_dir(tmp_path):
    """A real build (the host's QEMU behind a wrapper that, once told to, hangs at the capture
    instead of booting): SIGTERM removes the `--no-reuse` scratch dir at once; after a SIGKILL the
    next run sweeps it once its process is gone and it is stale."""
    from conftest import private_captures

    hang, mark = tmp_path / "hang", tmp_path / "mark"
    wrapper = tmp_path / "qemu-system-x86_64"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *-qtest*) if [ -e {hang} ]; then echo $$ > {mark}; exec sleep 60; fi;; '
                       'esac\nexec /usr/bin/qemu-system-x86_64 "$@"\n')
    wrapper.chmod(0o755)
    # the run killed with SIGKILL cannot remove its run dir: it stays in this test's folder
    (tmp_path / "tmp").mkdir()
    env = {**private_captures(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp")}
    captures = tmp_path / "home" / "qabi" / "captures"
    argv = [sys.executable, "-m", "harness.cli", "check", "--old", str(wrapper), "--new", str(wrapper), *FW_RUN,
            "--guest", "minimal"]
    first = subprocess.run(argv, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
                           check=False)
    assert first.returncode == 0, first.stderr
    hang.touch()

    def stopped(sig: signal.Signals) -> subprocess.Popen[str]:
        mark.unlink(missing_ok=True)
        with open(tmp_path / "stderr", "w") as stderr:   # not a pipe: a killed run's "QEMU" would hold it
            proc = subprocess.Popen([*argv, "--no-reuse"], cwd=REPO, env={**os.environ, **env},
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        deadline = time.monotonic() + 120
        while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mark.exists(), (tmp_path / "stderr").read_text()
        assert [p for p in captures.iterdir() if p.name.startswith(".fresh-")]   # the scratch dir exists now
        proc.send_signal(sig)
        proc.wait(timeout=60)
        return proc

    proc = stopped(signal.SIGTERM)
    assert proc.returncode == 2 and (tmp_path / "stderr").read_text().endswith("qabi: error: stopped by SIGTERM\n")
    assert [p.name for p in captures.iterdir() if p.name.startswith(".fresh-")] == []
    proc = stopped(signal.SIGKILL)
    os.kill(int(mark.read_text()), signal.SIGKILL)   # the "QEMU" the killed run left
    (left,) = [p for p in captures.iterdir() if p.name.startswith(".fresh-")]
    hour_ago = time.time() - 3700
    os.utime(left, (hour_ago, hour_ago))
    hang.unlink()
    again = subprocess.run(argv, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
                           check=False)
    assert again.returncode == 0, again.stderr
    assert not left.exists()


# --- verdict over runs (issue 19 class 1 and 3) ---
# One verdict function over run outcomes (harness.report.decide) decides check, the pytest plugin,
# report --merge, each matrix step and the matrix; merging is order-independent. Real QEMU: Debian's
# bullseye (QEMU 5.2) lacks pc-q35-7.2 and the pvpanic-pci device that bookworm (7.2) has; every
# capture goes over the firmware transport.
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.drift.model import SEVERITIES, Drift
from harness.report import OUTCOMES, Run, RunSet, decide, to_json

OLD5, NEW7 = "debian:bullseye", "debian:bookworm"
PVPANIC = '[[device]]\ndriver = "pvpanic-pci"\n'


def _outcome_run(outcome: str, name: str, severity: str = "break") -> Run:
    """A run whose outcome at fail-on `severity` (or any laxer threshold) is `outcome`."""
    side = {"spec": "debian:trixie", "sha256": "ab" * 32}
    if outcome in ("unsupported", "error"):
        return Run("pc-q35-7.2", name, side, side, status=outcome, reason="why")  # type: ignore[arg-type]
    drifts = (Drift("pci", f"pci {name}", "revision", 0, 1, severity),) if outcome == "drift" else ()  # type: ignore[arg-type]
    return Run("pc-q35-7.2", name, side, side, comparison=Comparison(drifts))


@given(st.lists(st.sampled_from(OUTCOMES), max_size=8), st.randoms())
@settings(deadline=None)
def test_the_verdict_over_every_combination_of_run_outcomes(outcomes, rnd):
    verdict = decide(outcomes)
    seen = set(outcomes)
    if "error" in seen or not seen & {"unchanged", "drift"}:
        assert verdict == "error"                      # an error, or nothing compared: could not decide
    elif "drift" in seen:
        assert verdict == "drift"                      # a proven drift, even beside unsupported runs
    else:
        assert verdict == ("error" if "unsupported" in seen else "unchanged")
    assert verdict != "unchanged" or (outcomes and seen == {"unchanged"})   # never over what was not compared
    shuffled = list(outcomes)
    rnd.shuffle(shuffled)
    assert decide(shuffled) == verdict                 # order-independent
    runs = tuple(_outcome_run(o, f"g{i}") for i, o in enumerate(outcomes))
    assert RunSet(runs).verdict == verdict and RunSet(runs).exit_code == {"unchanged": 0, "drift": 1, "error": 2}[verdict]
    from harness.matrix.table import cell_outcome

    cell = cell_outcome(outcomes)
    assert cell == verdict or (cell == "unsupported" and verdict == "error" and "error" not in seen)


def test_every_subset_of_outcomes_is_decided_the_same_by_runsets_and_the_matrix_whole():
    """Every subset of outcomes, split over two 'steps' every way: the whole is decide() of all runs."""
    for size in range(len(OUTCOMES) + 1):
        for subset in itertools.combinations(OUTCOMES, size):
            for cut in range(len(subset) + 1):
                steps = [subset[:cut], subset[cut:]]
                assert decide(o for step in steps for o in step) == decide(subset)
                if "unsupported" in subset or "error" in subset or not subset:
                    assert decide(subset) != "unchanged"


def _check_args(kind: str, tmp_path: Path) -> list[str]:
    """A check that cannot be decided: `unsupported` (the old build lacks the profiles' device),
    `error` (an unchanged run beside one whose device neither build has)."""
    pvp = _profile(tmp_path, PVPANIC, "pvp")
    if kind == "unsupported":
        pvp2 = _profile(tmp_path, PVPANIC.replace("pci\"", "pci\"\naddr = \"0x9\""), "pvp2")
        return ["--old", OLD5, "--new", NEW7, "--machine", "pc-q35-5.2", "--guest", str(pvp), "--guest", str(pvp2)]
    return ["--old", OLD5, "--new", OLD5, "--machine", "pc-q35-5.2", "--guest", "minimal", "--guest", str(pvp)]


def _undecided(done: subprocess.CompletedProcess[str], kind: str) -> None:
    line = _one_line_exit_2(done)
    assert line.startswith("qabi: error: could not decide: ") and f": {kind}: " in line, line


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["unsupported", "error"])
def test_check_that_cannot_compare_a_run_exits_2_with_its_line(tmp_path, kind):
    done = run_qabi("check", *_check_args(kind, tmp_path), *FIRMWARE, "--report", str(tmp_path / "r"), timeout=300)
    _undecided(done, kind)
    assert json.loads((tmp_path / "r" / "qabi.json").read_text())["verdict"] == "error"


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["unsupported", "error"])
def test_pytest_that_cannot_compare_a_run_exits_2_with_its_line(tmp_path, kind):
    args = [a.replace("--old", "--qemu-old").replace("--new", "--qemu-new") for a in _check_args(kind, tmp_path)]
    done = _pytest_harness(*args, *FIRMWARE, "--report", str(tmp_path / "r"))
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr
    assert "Traceback" not in done.stderr and "INTERNALERROR" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("qabi: error: could not decide: ") and f": {kind}: " in lines[-1], done.stderr
    assert json.loads((tmp_path / "r" / "qabi.json").read_text())["verdict"] == "error"


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["unsupported", "error"])
def test_merged_shards_that_cannot_compare_a_run_exit_2_in_every_order(tmp_path, kind):
    args = _check_args(kind, tmp_path)
    parts = []
    for i in (1, 2):
        done = run_qabi("check", *args, *FIRMWARE, "--shard", f"{i}/2", "--report", str(tmp_path / f"s{i}"),
                        timeout=300)
        assert done.returncode in (0, 2), done.stderr     # a shard alone says nothing of the whole check
        parts.append(str(tmp_path / f"s{i}" / "qabi.json"))
    outputs = set()
    for order in itertools.permutations(parts):
        done = run_qabi("report", "--merge", *order, "-o", str(tmp_path / f"m{len(outputs)}"), timeout=120)
        _undecided(done, kind)
        outputs.add(done.stdout.splitlines()[-2])         # the verdict line
    assert len(outputs) == 1


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["unsupported", "error"])
def test_matrix_and_its_step_that_cannot_compare_a_run_exit_2_with_a_line(tmp_path, kind):
    """The severe case: a step with one run unchanged and one not compared read `matrix verdict:
    unchanged`, exit 0, while the step's own qabi.json said error."""
    if kind == "unsupported":    # bullseye lacks pc-q35-7.2: an unsupported cell beside an unchanged one
        args = ["--machine", "pc-q35-5.2", "--machine", "pc-q35-7.2", "--guest", "minimal"]
    else:
        args = ["--machine", "pc-q35-5.2", "--guest", "minimal", "--guest", str(_profile(tmp_path, PVPANIC, "pvp"))]
    done = run_qabi("matrix", OLD5, OLD5, *args, *FIRMWARE, "-o", str(tmp_path / "m"), timeout=300)
    _undecided(done, kind)
    assert "matrix verdict: error" in done.stdout
    (step,) = (tmp_path / "m" / "steps").iterdir()
    assert json.loads((step / "qabi.json").read_text())["verdict"] == "error"
    matrix = json.loads((tmp_path / "m" / "matrix.json").read_text())
    assert matrix["verdict"] == "error" and matrix["steps"][0]["verdict"] == "error"
    outcomes = {row["outcome"] for row in matrix["rows"]}
    assert "unchanged" in outcomes and kind in outcomes


FIRMWARE = ("--transport", "firmware")


def _pytest_harness(*args: str, cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "harness"),
                           *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


# class 3: merging is order-independent; thresholds must agree unless --fail-on judges them all
def _report(tmp_path: Path, name: str, outcome: str, severity: str, fail_on: str | None) -> Path:
    """A report of one run: with details (it records `fail_on`) or as `qabi diff --json` writes it."""
    runset = RunSet((_outcome_run(outcome, name, severity),), fail_on=fail_on or "info")  # type: ignore[arg-type]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(to_json(runset, details=fail_on is not None)))
    return path


@given(st.lists(st.tuples(st.sampled_from(("unchanged", "drift")), st.sampled_from(SEVERITIES),
                          st.sampled_from((None, *SEVERITIES))), min_size=2, max_size=4),
       st.sampled_from((None, *SEVERITIES)))
@settings(max_examples=40, deadline=None)
def test_merge_gives_one_result_in_every_order(tmp_path_factory, inputs, fail_on):
    from harness.errors import QabiError
    from harness.matrix.merge import merge_reports

    folder = tmp_path_factory.mktemp("merge")
    paths = [_report(folder, f"g{i}", o, s, f) for i, (o, s, f) in enumerate(inputs)]
    results = set()
    for order in itertools.permutations(paths):
        try:
            merged = merge_reports(list(order), fail_on)  # type: ignore[arg-type]
            results.add((merged.verdict, merged.fail_on, tuple((r.machine, r.guest) for r in merged.runs)))
        except QabiError as exc:
            results.add(("refused", str(exc), ()))
    assert len(results) == 1, results
    ((verdict, detail, _runs),) = results
    recorded = {f for _o, _s, f in inputs}
    if fail_on is None and (None in recorded or len(recorded) > 1):
        assert verdict == "refused" and "--fail-on" in detail           # a missing or differing threshold
    else:
        threshold = fail_on or inputs[0][2]
        assert detail == threshold
        # each input's drifts judged at the one threshold, whatever threshold made its own verdict
        runs = [_outcome_run(o, f"g{i}", s) for i, (o, s, _f) in enumerate(inputs)]
        assert verdict == decide(r.outcome(threshold) for r in runs)  # type: ignore[arg-type]


def test_merge_refuses_a_report_without_its_threshold_first_or_last(tmp_path):
    """The issue's case: a `qabi diff --json` output (no fail_on) first skipped the check and lent
    the merge its inferred threshold: UNCHANGED one way, DRIFT the other."""
    diff = _report(tmp_path, "a", "drift", "info", None)
    full = _report(tmp_path, "b", "unchanged", "info", "warn")
    lines = set()
    for order in ([diff, full], [full, diff]):
        done = run_qabi("report", "--merge", *map(str, order), "-o", str(tmp_path / "m"), timeout=120)
        lines.add(_one_line_exit_2(done))
        assert not (tmp_path / "m").exists()
    assert len(lines) == 1 and "--fail-on" in lines.pop()
    verdicts = set()
    for order in ([diff, full], [full, diff]):
        done = run_qabi("report", "--merge", *map(str, order), "--fail-on", "info", "-o", str(tmp_path / "m"),
                        timeout=120)
        assert done.returncode == 1, done.stderr           # the info drift counts at info, in either order
        verdicts.add(done.stdout.splitlines()[-2])
    assert len(verdicts) == 1


# the defects: every exit 2 has its line, bounded shard counts and times, typed config, plan checks up front
@pytest.mark.parametrize("shard", ["1/1000000000", "1/1001", "1/" + "9" * 5000], ids=["1e9", "1001", "5000-digits"])
def test_a_huge_shard_count_is_refused_before_anything(shard):
    done = run_qabi("check", "--old", OLD5, "--new", OLD5, "--guest", "minimal", "--shard", shard, timeout=60)
    assert "N <= 1000" in _one_line_exit_2(done)


def test_more_shards_than_planned_runs_is_refused_before_any_capture():
    done = run_qabi("check", "--old", OLD5, "--new", OLD5, "--machine", "pc-q35-5.2", "--guest", "minimal",
                    "--guest", "windows", "--shard", "1/3", *FIRMWARE, "--no-reuse", timeout=120)
    assert "2 planned run(s): use at most 2 shards" in _one_line_exit_2(done)
    assert "started" not in done.stderr                  # no run began


@pytest.mark.parametrize("count", [10 ** 9, 1001, 3])
def test_a_merge_input_with_a_huge_shard_count_is_refused(tmp_path, count):
    paths = []
    for i in (1, 2):
        data = to_json(RunSet((_outcome_run("unchanged", f"g{i}"),)), details=True)
        data["shard"] = {"index": i, "count": count, "planned": [["pc-q35-7.2", "g1"], ["pc-q35-7.2", "g2"]]}
        paths.append(tmp_path / f"s{i}.json")
        paths[-1].write_text(json.dumps(data))
    started = time.monotonic()
    done = run_qabi("report", "--merge", *map(str, paths), "-o", str(tmp_path / "m"), timeout=60)
    line = _one_line_exit_2(done)
    assert "shard" in line and time.monotonic() - started < 30
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("where", ["top", "run", "migration"])
@pytest.mark.parametrize("value", ["1e999", "-1e999", "NaN", "-1", "1e300"])
def test_a_report_with_an_impossible_wall_time_is_refused(tmp_path, where, value):
    data = to_json(RunSet((_outcome_run("unchanged", "g"),), seconds=1.0), details=True)
    if where == "top":
        data["seconds"] = "@"
    elif where == "run":
        data["runs"][0]["seconds"] = "@"
    else:
        data["runs"][0]["migration"] = {"status": "ok", "direction": "forward", "seconds": "@", "error": None}
    path, other = tmp_path / "r.json", tmp_path / "s.json"
    path.write_text(json.dumps(data).replace('"@"', value))
    other.write_text(json.dumps(to_json(RunSet((_outcome_run("unchanged", "h"),)), details=True)))
    for verb in (["report", str(path), "-o", str(tmp_path / "r.html")],
                 ["report", "--merge", str(other), str(path), "-o", str(tmp_path / "m")]):
        line = _one_line_exit_2(run_qabi(*verb, timeout=60))
        assert "seconds" in line, line
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("table,message", [
    ("machine = 5", "machine = 5 is a int"),
    ('guest = ["minimal", 3]', "expected a string or a list of strings"),
    ('fail-on = ["warn"]', "expected a string"),
    ('machnie = "pc-q35-7.2"', "unknown key(s) machnie"),
    ("qabi = 1", "must be a table"),
])
def test_wrongly_typed_settings_are_one_line_in_cli_and_pytest(tmp_path, table, message):
    body = f"[tool]\n{table}\n" if table.startswith("qabi =") else f"[tool.qabi]\n{table}\n"
    (tmp_path / "pyproject.toml").write_text(body)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = subprocess.run([sys.executable, "-m", "harness.cli", "check", "--old", OLD5, "--new", OLD5],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env, check=False)
    assert message in _one_line_exit_2(cli)
    tests = _pytest_harness("--rootdir", str(tmp_path), "-c", str(tmp_path / "pyproject.toml"), cwd=tmp_path,
                            timeout=120)
    assert tests.returncode == 2 and "INTERNALERROR" not in tests.stdout + tests.stderr, tests.stdout + tests.stderr
    assert message in tests.stderr and tests.stderr.strip().count("\n") == 0, tests.stderr
    config = tmp_path / "xdg" / "qabi"
    config.mkdir(parents=True)
    (config / "config.toml").write_text(table.replace("qabi = 1", "debian-mirror = 1") + "\n")
    (tmp_path / "pyproject.toml").unlink()
    cli = subprocess.run([sys.executable, "-m", "harness.cli", "check", "--old", OLD5, "--new", OLD5],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
                         env={**env, "XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert "config.toml" in _one_line_exit_2(cli)


@pytest.mark.parametrize("target", ["file", "under-a-file", "proc", "dangling-link"])
def test_pytest_report_that_cannot_be_a_folder_is_refused_up_front(tmp_path, target):
    mine = tmp_path / "notes.txt"
    mine.write_text("the user's own file\n")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere" / "deeper")
    report = {"file": mine, "under-a-file": mine / "reports", "proc": Path("/proc/qabi-reports"),
              "dangling-link": link}[target]
    started = time.monotonic()
    done = _pytest_harness("--qemu-old", OLD5, "--qemu-new", OLD5, "--guest", "minimal", *FIRMWARE,
                           "--report", str(report))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert done.stderr.strip().count("\n") == 0 and "qabi:" in done.stderr, done.stderr
    assert "passed" not in done.stdout and time.monotonic() - started < 120
    assert mine.read_text() == "the user's own file\n"


@pytest.mark.parametrize("twice", [("--guest", "minimal", "--guest", "minimal"),
                                   ("--guest", "minimal", "--guest", "guests/minimal.toml"),
                                   ("--guest", "minimal", "--machine", "pc-q35-5.2", "--machine", "pc-q35-5.2")])
def test_a_run_asked_twice_is_refused_before_any_capture(tmp_path, twice):
    for verb in (["check", "--old", OLD5, "--new", OLD5], ["matrix", OLD5, OLD5, "-o", str(tmp_path / "m")]):
        done = run_qabi(*verb, *twice, *FIRMWARE, "--no-reuse", timeout=120)
        assert "given twice" in _one_line_exit_2(done) and "started" not in done.stderr
    tests = _pytest_harness("--qemu-old", OLD5, "--qemu-new", OLD5, *twice, *FIRMWARE, "--report", str(tmp_path / "r"))
    assert tests.returncode == 2 and "given twice" in tests.stderr and tests.stderr.strip().count("\n") == 0
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("bad", [("--guest", "no-such-profile"), ("--machine", "pc-q35-99.9")])
def test_pytest_bad_guest_or_machine_is_one_line_not_an_error_per_item(bad):
    done = _pytest_harness("--qemu-old", OLD5, "--qemu-new", OLD5, *bad, *FIRMWARE)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stdout + done.stderr
    assert bad[1] in done.stderr and " error" not in done.stdout
