"""qabi: the command line. Exit 0 success/unchanged, 1 drift, 2 could not decide."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import replace
from typing import Any

from harness.errors import QabiError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"qabi: error: {message}\n")


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


# -- qabi qemu ----------------------------------------------------------------------------------
def cmd_qemu_fetch(args: argparse.Namespace) -> int:
    from harness.qemu import resolve, verify_prefix

    build = resolve(args.spec, firmware_from=args.firmware_from, refresh=args.refresh)
    if build.prefix:
        from pathlib import Path

        verify_prefix(Path(build.prefix))
    info = build.info()
    print(f"{args.spec}: QEMU {info.version} ({build.package_version}) ready at {build.prefix or build.executable}")
    return 0


def cmd_qemu_info(args: argparse.Namespace) -> int:
    from harness.qemu import resolve

    build = resolve(args.spec, firmware_from=args.firmware_from, offline=args.offline)
    data = build.as_json()
    if args.json:
        _print_json(data)
        return 0
    print(f"spec:             {data['spec']}")
    print(f"QEMU version:     {data['version']}")
    print(f"package version:  {data['package_version']}")
    print(f"executable:       {data['executable']}")
    print(f"sha256:           {data['sha256']}")
    print(f"firmware dirs:    {', '.join(data['firmware_dirs']) or '(built in)'}")
    if data["firmware_from"]:
        print(f"firmware from:    {data['firmware_from']}")
    ovmf = data.get("ovmf")
    print(f"OVMF:             {ovmf['package_version'] or 'unknown version'} ({len(ovmf['files'])} images in "
          f"{ovmf['dir']})" if ovmf else "OVMF:             none")
    print("machine types:")
    for m in data["machines"]:
        extra = []
        if m["alias"]:
            extra.append(f"alias {m['alias']}")
        if m["default"]:
            extra.append("default")
        if m["deprecated"]:
            extra.append("deprecated")
        print(f"  {m['name']}" + (f"  ({', '.join(extra)})" if extra else ""))
    print(f"devices:          {len(data['devices'])}")
    return 0


def cmd_qemu_list(args: argparse.Namespace) -> int:
    from harness.qemu import cached_builds

    builds = cached_builds()
    if args.json:
        _print_json(builds)
        return 0
    if not builds:
        print("no Debian builds in the cache")
    for b in builds:
        print(f"{b['spec']:<55} {b['packages']:>4} packages {b['bytes'] / 1e6:8.1f} MB  {b['prefix']}")
    return 0


# -- qabi capture -------------------------------------------------------------------------------
def cmd_capture(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.capture import capture, plan_capture
    from harness.guest.profile import load_profile
    from harness.qemu import resolve

    access = _access(args)
    build = resolve(args.qemu, firmware_from=args.firmware_from)
    profile = load_profile(args.guest)
    machine = args.machine or profile.machine
    if machine is None:
        raise QabiError(f"--machine is needed: profile '{profile.name}' pins no machine type (machine = ...)")
    plan = plan_capture(build, profile, machine, args.accel, args.timeout, access,
                        Path(args.reference) if args.reference else None)
    result = capture(plan, Path(args.output))
    m = result.manifest
    print(f"{result.path}: {len(m['files'])} files from {m['build']['spec']} (QEMU {m['build']['version']}), "
          f"{m['machine']['resolved']}, guest {m['profile']['name']} over {m['transport']}, "
          f"{m['timings']['total']:.1f}s")
    return 0


def _access(args: argparse.Namespace) -> Any:
    """--transport, --guest-image, --ssh-user, --ssh-key, --ssh-host-key as a GuestAccess (checked)."""
    from harness.plan import GuestAccess

    return GuestAccess.from_options(args.transport, args.guest_image, args.ssh_user, args.ssh_key,
                                    args.ssh_host_key)


def _add_transport_option(p: argparse.ArgumentParser) -> None:
    from harness.plan import DEFAULT_TRANSPORT
    from harness.transport.base import transport_names

    p.add_argument("--transport", choices=transport_names(), default=DEFAULT_TRANSPORT,
                   help=f"how the hardware is read: {', '.join(transport_names())} (default: {DEFAULT_TRANSPORT}, "
                        "at the firmware hand-off; serial/ssh boot the reference Linux guest)")


def _add_access_options(p: argparse.ArgumentParser) -> None:
    _add_transport_option(p)
    p.add_argument("--guest-image", metavar="FILE",
                   help="boot this qcow2/raw disk image (never written: snapshot=on) instead of the reference "
                        "guest; needs --transport ssh")
    p.add_argument("--ssh-user", metavar="U", help="login for --guest-image (default root; others use sudo -n)")
    p.add_argument("--ssh-key", metavar="K", help="private key that logs in to --guest-image")
    p.add_argument("--ssh-host-key", metavar="F",
                   help="the guest image's pinned host public key(s): a .pub or known_hosts file")


# -- qabi profile import ------------------------------------------------------------------------
def cmd_profile_import(args: argparse.Namespace) -> int:
    """A profile from the user's own VM (a libvirt domain XML or a QEMU command line): the TOML on
    stdout or in -o FILE (never over an existing file), one `note:` line on stderr per dropped part."""
    from pathlib import Path

    from harness.cache import atomic_write_bytes
    from harness.guest.profile_import import import_profile, read_input

    out = None if args.output in (None, "-") else Path(args.output)
    if out is not None and (out.exists() or out.is_symlink()):
        raise QabiError(f"{args.output[:200]}: already exists (qabi never overwrites a file; remove it or name another)")
    text, where = read_input(args.input)
    toml, notes = import_profile(text, where)
    for note in notes:
        print(f"qabi: note: {note}", file=sys.stderr)
    if out is None:
        sys.stdout.write(toml)
        return 0
    atomic_write_bytes(out, toml, what="profile")
    print(f"{out}: profile written ({len(notes)} host-only parts dropped, listed at its top)")
    return 0


# -- qabi diff ----------------------------------------------------------------------------------
def cmd_diff(args: argparse.Namespace) -> int:
    """Compare two fingerprints (JSON files or capture directories): 0 unchanged, 1 drift, 2 error."""
    from harness.drift.engine import compare
    from harness.drift.waivers import DEFAULT_WAIVERS, load_waivers
    from harness.fingerprint.decode import load_fingerprint
    from harness.report import Run, RunSet, render_text, write_json

    old_fp: dict[str, Any] | None = None
    new_fp: dict[str, Any] | None = None
    waivers_path = args.waivers or (DEFAULT_WAIVERS if DEFAULT_WAIVERS.is_file() else None)
    _refuse_inputs(args.json, (args.old, args.new, waivers_path))
    try:
        waivers = load_waivers(waivers_path) if waivers_path else None
        old_fp = load_fingerprint(args.old)
        new_fp = load_fingerprint(args.new)
        run = Run.from_fingerprints(old_fp, new_fp, compare(old_fp, new_fp, waivers))
    except QabiError as exc:
        _error(str(exc))
        run = Run.failed(str(exc), old_fp, new_fp)
    runset = RunSet((run,), fail_on=args.fail_on)
    if args.json:
        write_json(runset, args.json)
    if args.json != "-":
        sys.stdout.write(render_text(runset))
    return runset.exit_code


# -- qabi fingerprint / record -------------------------------------------------------------------
def cmd_fingerprint(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.cache import STDOUT, atomic_write_bytes
    from harness.fingerprint.decode import fingerprint_capture

    data = fingerprint_capture(Path(args.capture))
    atomic_write_bytes(Path(args.output or STDOUT), json.dumps(data, indent=1, sort_keys=True) + "\n",
                       what="fingerprint")
    return 0


def _refuse_inputs(output: str | None, inputs: Any) -> None:
    """An output option (--json, -o) that names one of the command's input files is refused."""
    from harness.cache import STDOUT, refuse_inputs

    if output and output != STDOUT:
        refuse_inputs(output, [i for i in inputs if i], "output")


def cmd_record(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.baseline import record
    from harness.capture import plan_capture
    from harness.check import captured, expand_guests, versioned_machines
    from harness.errors import UnsupportedError
    from harness.guest.profile import load_profile
    from harness.plan import GuestAccess
    from harness.qemu import resolve

    build = resolve(args.qemu, firmware_from=args.firmware_from)
    machines = [m for a in args.machine
                for m in (versioned_machines(build.info().machine_names()) if a == "common" else [a])]
    status = 0
    for machine in machines:
        for guest in expand_guests(args.guest):
            try:
                cap = captured(plan_capture(build, load_profile(guest), machine, args.accel, args.timeout,
                                            GuestAccess(transport=args.transport)))
            except UnsupportedError as exc:
                print(f"{machine} {guest}: {exc}")
                continue
            dest = record(cap.path, Path(args.output))
            print(f"{machine} {guest}: recorded in {dest}")
    return status


# -- qabi guest ---------------------------------------------------------------------------------
def cmd_guest_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.guest import build_reference_image

    image = build_reference_image(Path(args.reference) if args.reference else None)
    data = image.as_json()
    if args.json:
        _print_json(data)
        return 0
    print(f"image sha256:     {data['sha256']}")
    print(f"kernel:           {data['kernel_version']}  ({data['kernel']}, {data['kernel_size']} bytes)")
    print(f"initramfs:        {data['initramfs']}  ({data['initramfs_size']} bytes)")
    print(f"command line:     {data['cmdline']}")
    print(f"modules:          {', '.join(data['modules']) or '(none)'}")
    print(f"ssh host key:     {data.get('host_key') or '(none)'}")
    print("packages:")
    width = max((len(pkg["role"]) for pkg in data["packages"]), default=8)
    for pkg in data["packages"]:
        print(f"  {pkg['role']:<{width}} {pkg['name']}={pkg['version']}  sha256 {pkg['sha256']}")
    print("contents:")
    for entry in data["contents"]:
        if entry["kind"] == "file":
            detail = f"{entry['size']:>9}  {entry['sha256'][:16]}"
        elif entry["kind"] == "symlink":
            detail = f"-> {entry['target']}"
        elif entry["kind"] == "chardev":
            detail = f"char {entry['rdev'][0]}:{entry['rdev'][1]}"
        else:
            detail = ""
        print(f"  {entry['mode']} {entry['kind']:<7} {entry['path']:<28} {detail}".rstrip())
    return 0


# -- qabi check ---------------------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.check import Check, RunRequest
    from harness.matrix.progress import RunProgress
    from harness.report import render_text, write_json
    from harness.shard import parse_shard

    _refuse_inputs(args.json, (args.waivers,))
    if args.report:   # refused before any run, not after
        from harness.report.jsonreport import REPORT_FILES, report_folder

        report_folder(args.report, REPORT_FILES, (args.waivers,) if args.waivers else (), create=False)
    request = RunRequest(args.old, args.new, tuple(args.machine or ()), tuple(args.guest or ()), args.accel,
                         args.timeout, _access(args), args.waivers, args.fail_on, not args.no_reuse,
                         args.firmware_from, args.jobs, parse_shard(args.shard), _migrate_option(args.migrate))
    check = Check(request)
    with RunProgress(len(check.cases()), fail_on=args.fail_on) as meter:
        runset = check.run_all(meter.start, meter.done)
    runset = replace(runset, seconds=round(time.monotonic() - meter.started, 3))
    sys.stdout.write(render_text(runset))
    _undecided(runset)
    if args.json:
        write_json(runset, args.json, details=True)
    if args.report:
        from harness.report.html import write_reports

        _json_path, html_path = write_reports(runset, Path(args.report))
        print(f"HTML report: {html_path}")
    return int(runset.exit_code)


def _undecided(runset: Any) -> None:
    """An exit 2 (could not decide) says why on stderr, in one line (bisect scripts read it)."""
    from harness.report import undecided_reason

    if runset.exit_code == 2:
        _error(f"could not decide: {undecided_reason(runset)}")


def _migrate_option(value: str | None) -> str | None:
    """--migrate, else QABI_MIGRATE / config file / [tool.qabi] migrate (forward, both or none)."""
    from harness.config import setting

    return value or setting("migrate")


def cmd_report(args: argparse.Namespace) -> int:
    """Re-render the self-contained HTML report from a JSON report file: 0 written, 2 bad input.
    With --merge: shard reports into one report (DIR/qabi.json + DIR/index.html) and verdict."""
    from pathlib import Path

    from harness.report.html import load_report, write_html

    if args.merge:
        from harness.matrix.merge import merge_reports
        from harness.report import render_text
        from harness.report.html import write_reports

        if not args.output:
            raise QabiError("--merge needs -o DIR (where the merged report goes)")
        from harness.report.jsonreport import REPORT_FILES, report_folder

        report_folder(args.output, REPORT_FILES, args.report, create=False)   # never over an input shard
        runset = merge_reports(args.report, args.fail_on)
        sys.stdout.write(render_text(runset))
        _json_path, html_path = write_reports(runset, Path(args.output), inputs=args.report)
        print(f"HTML report: {html_path}")
        _undecided(runset)
        return int(runset.exit_code)
    if args.fail_on:
        raise QabiError("--fail-on re-judges shard reports: it goes with --merge")
    if len(args.report) != 1:
        raise QabiError("qabi report takes one JSON report (several only with --merge)")
    source = Path(args.report[0])
    target = Path(args.output) if args.output else source.with_suffix(".html")
    _refuse_inputs(str(target), (source,))
    written = write_html(load_report(source), target)
    print(f"{written}: HTML report from {source}")
    return 0


# -- qabi matrix / cache ------------------------------------------------------------------------
def cmd_matrix(args: argparse.Namespace) -> int:
    """The upgrade matrix: 0 unchanged everywhere, 1 drift, 2 could not decide (as `check`)."""
    from pathlib import Path

    from harness.matrix import run_matrix
    from harness.matrix.run import MatrixRequest
    from harness.matrix.table import text_pivot
    from harness.shard import parse_shard
    request = MatrixRequest(tuple(args.specs), tuple(args.machine or ("common",)), tuple(args.guest or ()),
                            args.pairs, args.accel, args.timeout, _access(args), args.waivers, args.fail_on,
                            not args.no_reuse, args.jobs, parse_shard(args.shard))
    result = run_matrix(request, Path(args.output))
    from harness.matrix.table import pivot

    table = text_pivot(pivot(result.frame))
    if not table.empty:
        import pandas as pd

        with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                               "display.max_colwidth", 60):
            print(table.to_string())
    print(f"matrix verdict: {result.verdict} ({len(result.frame)} runs in {len(result.steps)} steps, "
          f"{result.seconds:.1f}s)")
    print(f"matrix: {result.outputs['index.html']}")
    if result.exit_code == 2:
        _error(f"could not decide: {result.undecided()}")
    return result.exit_code


def cmd_cache_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.matrix.cachefile import export_captures

    names = export_captures(Path(args.file))
    print(f"{args.file}: {len(names)} captures exported")
    return 0


def cmd_cache_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.matrix.cachefile import import_captures

    moved = import_captures(Path(args.file))
    print(f"{args.file}: {len(moved.added)} captures imported, {len(moved.kept)} already in the cache")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qabi", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    qemu = sub.add_parser("qemu", help="QEMU builds: fetch, info, list")
    qsub = qemu.add_subparsers(dest="qemu_command", required=True, parser_class=_Parser)
    p = qsub.add_parser("fetch", help="provision a build into the cache and verify it")
    p.add_argument("spec")
    p.add_argument("--firmware-from", metavar="SPEC")
    p.add_argument("--refresh", action="store_true", help="re-read the suite's index for the newest version")
    p.set_defaults(func=cmd_qemu_fetch)
    p = qsub.add_parser("info", help="version, package version, sha256, machine types, devices")
    p.add_argument("spec")
    p.add_argument("--firmware-from", metavar="SPEC")
    p.add_argument("--json", action="store_true")
    p.add_argument("--offline", action="store_true", help="use only what is cached")
    p.set_defaults(func=cmd_qemu_info)
    p = qsub.add_parser("list", help="builds in the cache")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_qemu_list)

    guest = sub.add_parser("guest", help="the reference guest image")
    gsub = guest.add_subparsers(dest="guest_command", required=True, parser_class=_Parser)
    p = gsub.add_parser("build", help="build (or take from the cache) the reference image and describe it")
    p.add_argument("--json", action="store_true")
    p.add_argument("--reference", metavar="DIR", help="a reference-guest recipe other than guests/reference")
    p.set_defaults(func=cmd_guest_build)

    profile = sub.add_parser("profile", help="guest profiles: import one from your own VM")
    psub = profile.add_subparsers(dest="profile_command", required=True, parser_class=_Parser)
    p = psub.add_parser("import", help="a profile from a libvirt domain XML (virsh dumpxml) or a QEMU command line")
    p.add_argument("input", metavar="FILE|-", help="the domain XML or the command line ('-': stdin)")
    p.add_argument("-o", "--output", metavar="PROFILE.toml", help="write the profile here (default: stdout)")
    p.set_defaults(func=cmd_profile_import)

    p = sub.add_parser("capture", help="boot the reference guest and capture what it sees")
    p.add_argument("--qemu", required=True, metavar="SPEC")
    p.add_argument("--firmware-from", metavar="SPEC")
    p.add_argument("--machine", metavar="M", help="machine type (default: the profile's own `machine`)")
    p.add_argument("--guest", required=True, metavar="PROFILE")
    p.add_argument("--accel", choices=["tcg", "kvm"], default="tcg")
    p.add_argument("--timeout", type=float, default=180.0, metavar="S")
    p.add_argument("--reference", metavar="DIR",
                   help="a reference-guest recipe other than guests/reference (e.g. a modified probe)")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    _add_access_options(p)
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("check", help="capture both builds and diff them: the verdict")
    p.add_argument("--old", required=True, metavar="SPEC", help="old build spec, or a recorded baseline dir")
    p.add_argument("--new", required=True, metavar="SPEC")
    p.add_argument("--firmware-from", metavar="SPEC", help="run the new build with this build's firmware")
    p.add_argument("--machine", action="append", metavar="M",
                   help="machine type (repeatable; 'common' = every versioned i440fx/q35 type both have; "
                        "default: a profile's own `machine`, else the newest of each family both have)")
    p.add_argument("--guest", action="append", metavar="P", help="profile (repeatable; default: all)")
    p.add_argument("--accel", choices=["tcg", "kvm"], default="tcg")
    p.add_argument("--waivers", metavar="F", help="waiver file (default: fingerprints/waivers.toml if present)")
    p.add_argument("--json", metavar="F", help="write the JSON verdict here")
    p.add_argument("--report", metavar="DIR", help="write DIR/index.html and DIR/qabi.json")
    p.add_argument("--no-reuse", action="store_true",
                   help="boot every side afresh instead of reusing cached captures with identical inputs")
    p.add_argument("--fail-on", choices=["break", "warn", "info"], default="warn")
    p.add_argument("--timeout", type=float, default=180.0, metavar="S")
    p.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                   help="runs (machine, guest) captured side by side (default: one per core, as memory allows)")
    p.add_argument("--shard", metavar="I/N", help="only shard I of N of the runs (CI runners; merge with "
                                                  "qabi report --merge)")
    p.add_argument("--migrate", choices=["none", "forward", "both"], default=None,
                   help="also live-migrate a running guest old -> new (both: and back), compare vmstate and device "
                        "properties (default: env QABI_MIGRATE or [tool.qabi] migrate, else none)")
    _add_access_options(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("matrix", help="the upgrade matrix: checks along a list of builds, machine type x step")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="builds in upgrade order (at least two)")
    p.add_argument("--machine", action="append", metavar="M",
                   help="machine type or OLD:NEW bump (repeatable; default 'common': every versioned type "
                        "both builds of a step have)")
    p.add_argument("--guest", action="append", metavar="P", help="profile (repeatable; default: all)")
    p.add_argument("--pairs", choices=["chain", "first"], default="chain",
                   help="chain: each build against the next (default); first: the first against each later one")
    p.add_argument("--accel", choices=["tcg", "kvm"], default="tcg")
    p.add_argument("--waivers", metavar="F", help="waiver file (default: fingerprints/waivers.toml if present)")
    p.add_argument("--fail-on", choices=["break", "warn", "info"], default="warn")
    p.add_argument("--timeout", type=float, default=180.0, metavar="S")
    p.add_argument("--no-reuse", action="store_true", help="boot every side afresh")
    p.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                   help="runs captured side by side (default: one per core, as memory allows)")
    p.add_argument("--shard", metavar="I/N", help="only shard I of N of each step's runs")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="matrix.csv, matrix.md, matrix.json, index.html and steps/*/ (each step's report)")
    _add_access_options(p)
    p.set_defaults(func=cmd_matrix)

    cache = sub.add_parser("cache", help="move captures between runners: export, import")
    csub = cache.add_subparsers(dest="cache_command", required=True, parser_class=_Parser)
    p = csub.add_parser("export", help="every complete capture of the cache into a tarball")
    p.add_argument("file", metavar="FILE", help="the tarball to write (.tar.gz compressed)")
    p.set_defaults(func=cmd_cache_export)
    p = csub.add_parser("import", help="verified captures from a tarball into the cache")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_cache_import)

    p = sub.add_parser("fingerprint", help="decode a capture into fingerprint JSON")
    p.add_argument("capture", metavar="CAPTURE")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.set_defaults(func=cmd_fingerprint)

    p = sub.add_parser("record", help="record golden baselines (capture bundles) under fingerprints/")
    p.add_argument("--qemu", required=True, metavar="SPEC")
    p.add_argument("--firmware-from", metavar="SPEC")
    p.add_argument("--machine", action="append", required=True, metavar="M",
                   help="machine type (repeatable; 'common' = every versioned i440fx/q35 type)")
    p.add_argument("--guest", action="append", metavar="P", help="profile (repeatable; default: all)")
    p.add_argument("--accel", choices=["tcg", "kvm"], default="tcg")
    p.add_argument("--timeout", type=float, default=180.0, metavar="S")
    p.add_argument("-o", "--output", default="fingerprints", metavar="DIR")
    _add_transport_option(p)
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("diff", help="compare two fingerprints (JSON files or capture directories)")
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")
    p.add_argument("--waivers", metavar="F", help="waivers TOML (default fingerprints/waivers.toml if present)")
    p.add_argument("--json", metavar="F", help="also write the JSON report to F ('-' for stdout)")
    p.add_argument("--fail-on", choices=["break", "warn", "info"], default="warn",
                   help="lowest severity that counts as drift (default warn)")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("report", help="render the self-contained HTML report from a JSON report; merge shards")
    p.add_argument("report", metavar="JSON", nargs="+",
                   help="a JSON report (qabi check/diff --json, or reports/qabi.json); with --merge, one per shard")
    p.add_argument("--merge", action="store_true",
                   help="merge shard reports (qabi.json of each --shard I/N) into one report in -o DIR")
    p.add_argument("-o", "--output", metavar="HTML|DIR",
                   help="where to write the HTML (default: JSON with .html); with --merge, the report folder")
    p.add_argument("--fail-on", choices=["break", "warn", "info"], default=None,
                   help="with --merge: judge every shard's drifts at this threshold (needed when the shards "
                        "do not all record the same one, e.g. qabi diff --json outputs)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    from harness.qemu.process import Terminated, install_signal_handlers, kill_all

    parser = build_parser()
    args = parser.parse_args(argv)
    install_signal_handlers()
    try:
        try:
            return _run(args)
        finally:
            kill_all()
    except (Terminated, KeyboardInterrupt) as exc:
        # the one signal arrived while an error line was printed or QEMU was being killed (later ones
        # are ignored): still one line and exit 2, never a traceback
        kill_all()
        return 2 if _PRINTED else _error("interrupted" if isinstance(exc, KeyboardInterrupt) else f"stopped by {exc}")


def _run(args: argparse.Namespace) -> int:
    from harness.qemu.process import Terminated

    try:
        return int(args.func(args))
    except QabiError as exc:
        return _error(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _error("interrupted")
    except Terminated as exc:
        return _error(f"stopped by {exc}")
    # the last line of defence: every failure is exit 2 with one line, never 1, never a traceback
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _error(f"{where}{exc.strerror or exc}")
    except RecursionError:
        return _error("input nested too deeply")
    except (ValueError, UnicodeError, MemoryError) as exc:
        return _error(f"{type(exc).__name__}: {exc}")


_PRINTED: list[str] = []   # the error lines written


def _error(message: str, code: int = 2) -> int:
    """One line on stderr, control characters escaped (guest text can be in it), written whole: a
    signal that arrives meanwhile is held until the line is out (and then ends the run quietly)."""
    from harness.escape import escape_controls
    from harness.qemu.process import signals_held

    first = " ".join(message.split("\n")) if message else "unknown error"
    line = f"qabi: error: {escape_controls(first, keep='')}\n"
    with signals_held():
        try:
            sys.stderr.flush()
            os.write(sys.stderr.fileno(), line.encode("utf-8", "backslashreplace"))
        except (OSError, ValueError):   # no file descriptor (a captured stream): through the stream
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(line)
                sys.stderr.flush()
        _PRINTED.append(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
