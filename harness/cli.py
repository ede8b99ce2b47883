"""qabi: the command line. Exit 0 success/unchanged, 1 drift, 2 could not decide."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from harness.errors import QabiError

DEFAULT_OLD = "debian:bookworm-security"
DEFAULT_NEW = "debian:bookworm"


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

    from harness.capture import capture
    from harness.guest.profile import load_profile
    from harness.qemu import resolve

    build = resolve(args.qemu, firmware_from=args.firmware_from)
    profile = load_profile(args.guest)
    result = capture(build, profile, args.machine, Path(args.output), accel=args.accel, timeout=args.timeout)
    m = result.manifest
    print(f"{result.path}: {len(m['files'])} files from {m['build']['spec']} (QEMU {m['build']['version']}), "
          f"{m['machine']['resolved']}, guest {m['profile']['name']}, {m['timings']['total']:.1f}s")
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

    p = sub.add_parser("capture", help="boot the reference guest and capture what it sees")
    p.add_argument("--qemu", required=True, metavar="SPEC")
    p.add_argument("--firmware-from", metavar="SPEC")
    p.add_argument("--machine", required=True, metavar="M")
    p.add_argument("--guest", required=True, metavar="PROFILE")
    p.add_argument("--accel", choices=["tcg", "kvm"], default="tcg")
    p.add_argument("--timeout", type=float, default=180.0, metavar="S")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.set_defaults(func=cmd_capture)
    return parser


def main(argv: list[str] | None = None) -> int:
    from harness.qemu.process import install_signal_handlers, kill_all

    parser = build_parser()
    args = parser.parse_args(argv)
    install_signal_handlers()
    try:
        return int(args.func(args))
    except QabiError as exc:
        print(f"qabi: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("qabi: interrupted", file=sys.stderr)
        return 2
    finally:
        kill_all()


if __name__ == "__main__":
    sys.exit(main())
