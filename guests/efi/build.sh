#!/bin/sh
# Build the EFI hand-off probe from probe.c with gcc, GNU binutils and gnu-efi (Debian packages gcc,
# binutils, gnu-efi), deterministically (no timestamps, no build ids, fixed paths):
#   sh guests/efi/build.sh [OUT]        (default: guests/efi/probe.efi)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/probe.efi}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here/probe.c" "$work/probe.c"
cd "$work"
gcc -O2 -fno-stack-protector -fno-strict-aliasing -fpic -fshort-wchar -mno-red-zone -ffreestanding \
    -fno-asynchronous-unwind-tables -DGNU_EFI_USE_MS_ABI -I/usr/include/efi -I/usr/include/efi/x86_64 \
    -ffile-prefix-map="$work"=. -c -o probe.o probe.c
ld -nostdlib -znocombreloc -shared -Bsymbolic --build-id=none -T /usr/lib/elf_x86_64_efi.lds \
    /usr/lib/crt0-efi-x86_64.o probe.o -L/usr/lib -lefi -lgnuefi -o probe.so
objcopy -j .text -j .sdata -j .data -j .dynamic -j .dynsym -j .rel -j .rela -j '.rel.*' -j '.rela.*' -j .reloc \
    --target efi-app-x86_64 --subsystem=10 probe.so probe.efi
# the PE header's TimeDateStamp (at the PE signature + 8): zero, so the same source gives the same bytes
python3 - probe.efi <<'PY'
import struct, sys
data = bytearray(open(sys.argv[1], "rb").read())
pe = struct.unpack_from("<I", data, 0x3C)[0]
struct.pack_into("<I", data, pe + 8, 0)
open(sys.argv[1], "wb").write(data)
PY
cp probe.efi "$out"
