"""A reader for the two things the image build needs from ELF64 little-endian files: a kernel
module's .modinfo, and an executable's dynamic loader and DT_NEEDED libraries."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from harness.guest.recipe import ImageError

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ = 0, 1, 5, 10
EM_X86_64 = 62


@dataclass(frozen=True)
class ElfDynamic:
    """What the dynamic loader needs to run an ELF file."""

    interpreter: str | None          # PT_INTERP (executables), e.g. /lib64/ld-linux-x86-64.so.2
    needed: tuple[str, ...]          # DT_NEEDED, in order


def elf_dynamic(data: bytes, name: str) -> ElfDynamic:
    """PT_INTERP and DT_NEEDED of an x86-64 ELF64 little-endian executable or shared object."""
    if data[:4] != b"\x7fELF" or len(data) < 64 or data[4] != 2 or data[5] != 1:
        raise ImageError(f"{name} is not an ELF64 little-endian file")
    try:
        e_type, e_machine = struct.unpack_from("<HH", data, 0x10)
        if e_machine != EM_X86_64:
            raise ValueError(f"machine {e_machine}, not x86-64")
        if e_type not in (2, 3):
            raise ValueError(f"type {e_type}, not an executable or shared object")
        phoff, = struct.unpack_from("<Q", data, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
        if phentsize < 56 or phoff + phnum * phentsize > len(data):
            raise ValueError("bad program header table")
        loads: list[tuple[int, int, int]] = []
        dynamic: tuple[int, int] | None = None
        interpreter: str | None = None
        for index in range(phnum):
            p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + index * phentsize)
            if p_offset + p_filesz > len(data):
                raise ValueError(f"segment {index} beyond end of file")
            if p_type == PT_LOAD:
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == PT_DYNAMIC:
                dynamic = (p_offset, p_filesz)
            elif p_type == PT_INTERP:
                interpreter = data[p_offset:p_offset + p_filesz].split(b"\0")[0].decode()
        if dynamic is None:
            return ElfDynamic(interpreter, ())          # statically linked
        tags: list[tuple[int, int]] = []
        for pos in range(dynamic[0], dynamic[0] + dynamic[1] - 15, 16):
            tag, value = struct.unpack_from("<qQ", data, pos)
            if tag == DT_NULL:
                break
            tags.append((tag, value))
        strtab = [v for t, v in tags if t == DT_STRTAB]
        strsz = [v for t, v in tags if t == DT_STRSZ]
        if len(strtab) != 1 or len(strsz) != 1:
            raise ValueError("dynamic section without one DT_STRTAB and one DT_STRSZ")
        # DT_STRTAB is an address: find the file offset of the PT_LOAD segment holding it
        for vaddr, offset, filesz in loads:
            if vaddr <= strtab[0] and strtab[0] + strsz[0] <= vaddr + filesz:
                stroff = offset + strtab[0] - vaddr
                break
        else:
            raise ValueError("DT_STRTAB is in no loaded segment")
        needed = []
        for tag, value in tags:
            if tag == DT_NEEDED:
                if value >= strsz[0]:
                    raise ValueError("DT_NEEDED beyond the string table")
                end = data.index(b"\0", stroff + value, stroff + strsz[0])
                needed.append(data[stroff + value:end].decode())
        return ElfDynamic(interpreter, tuple(needed))
    except (struct.error, ValueError) as exc:
        raise ImageError(f"{name}: malformed ELF: {exc}") from None


def modinfo(data: bytes, name: str) -> dict[str, list[str]]:
    """The .modinfo section of an ELF64 little-endian kernel module, as key -> values."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ImageError(f"kernel module {name} is not an ELF64 little-endian object")
    try:
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        if shentsize < 64 or shnum == 0 or shstrndx >= shnum:
            raise ValueError("bad section header table")

        def section(index: int) -> tuple[int, int, int]:
            base = shoff + index * shentsize
            name_off, = struct.unpack_from("<I", data, base)
            offset, size = struct.unpack_from("<QQ", data, base + 0x18)
            if offset + size > len(data):
                raise ValueError("section beyond end of file")
            return name_off, offset, size

        _, str_off, str_size = section(shstrndx)
        for index in range(shnum):
            name_off, offset, size = section(index)
            if name_off >= str_size:
                continue
            end = data.index(b"\0", str_off + name_off)
            if data[str_off + name_off:end] == b".modinfo":
                info: dict[str, list[str]] = {}
                for item in data[offset:offset + size].split(b"\0"):
                    key, sep, value = item.partition(b"=")
                    if sep:
                        info.setdefault(key.decode(errors="replace"), []).append(
                            value.decode(errors="replace"))
                return info
    except (struct.error, ValueError) as exc:
        raise ImageError(f"kernel module {name}: malformed ELF: {exc}") from None
    raise ImageError(f"kernel module {name} has no .modinfo section")
