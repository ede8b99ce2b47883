"""Hostile input, one test (or more) per class of issue 16: what qabi refuses, and how it fails.

Every failure is exit 2 with one line on stderr (never 1, never a traceback). Real QEMU (the host's
`system` build, TCG) where the class needs it: a build that lacks a device (class 1), signals
mid-boot (class 9); a real OpenSSH server for the key-only login (class 5); real tmpfs mounts in a
private mount namespace for a full and a read-only disk (class 3).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import DATA, REPO, run_qabi

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


def test_device_neither_build_has_is_a_profile_error_with_a_hint(tmp_path):
    profile = _profile(tmp_path, '[[device]]\ndriver = "qxl-vgaa"\naddr = "0x2"\n', "typo")
    done = run_qabi("check", "--old", "system", "--new", "system", "--machine", "pc-i440fx-7.2",
                    "--guest", str(profile))
    line = _one_line_exit_2(done)
    assert "'qxl-vgaa' is on neither build" in line and "close: qxl-vga" in line


@pytest.mark.parametrize("driver", ["qxl-vga,romfile=/etc/passwd", "../qxl", "qxl vga", ""])
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
    ("", '[[device]]\ndriver = "ide-hd"\nprops = { serial = "X,romfile=/etc/passwd" }', "property serial"),
    ("", '[[device]]\ndriver = "e1000"\nprops = { romfile = "/etc/passwd" }', "property 'romfile' is not allowed"),
    ("", '[[device]]\ndriver = "virtio-blk-pci"\nprops = { drive = "x" }', "property 'drive' is not allowed"),
    ("", '[[device]]\ndriver = "e1000"\nprops = { "x-logfile" = "a" }', "not allowed"),
    ("", '[[device]]\ndriver = "e1000"\nprops = { speed = [1] }', "must be a string"),
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


# --- verdict over runs (issue 19 class 1 and 3) ---
# One verdict function over run outcomes (harness.report.decide) decides check, the pytest plugin,
# report --merge, each matrix step and the matrix; merging is order-independent. Real QEMU: Debian's
# bullseye (QEMU 5.2) lacks pc-q35-7.2 and the pvpanic-pci device that bookworm (7.2) has; every
# capture goes over the firmware transport.
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.drift.model import SEVERITIES, Comparison, Drift
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
