#!/bin/sh
# Build the reference payload from payload.S with GNU binutils (Debian package binutils):
#   sh guests/payload/build.sh [OUT]        (default: guests/payload/payload.bin)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/payload.bin}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
as --32 -o "$work/payload.o" "$here/payload.S"
ld -m elf_i386 -Ttext=0 -e _start --build-id=none -o "$work/payload.elf" "$work/payload.o"
objcopy -O binary -j .text "$work/payload.elf" "$out"
