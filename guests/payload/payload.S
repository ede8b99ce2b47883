/*
 * qabi reference payload: a Linux boot-protocol (bzImage-format) stub booted with -kernel.
 *
 * QEMU loads it exactly as it loads the reference guest's kernel (same linuxboot option ROM,
 * same fw_cfg files), so the hardware is the one the serial transport boots on. SeaBIOS'
 * linuxboot ROM copies the setup part to 0x10000 and jumps, in real mode, to 0x1020:0000 (file
 * offset 0x200). The stub then, on the boot vCPU only:
 *
 *   1. reads the firmware memory map with INT 15h, AX=E820h, as Linux's boot code does
 *      (20-byte entries, until EBX=0, CF, a bad signature, or 128 entries);
 *   2. executes CPUID for every leaf of the basic, hypervisor and extended ranges (ECX=0) and
 *      subleaves 1..63 of every leaf that has subleaves (the host keeps what the guest probe
 *      would keep);
 *   3. stores the results at the fixed address 0x30000 and writes the completion marker last;
 *   4. halts for good (cli; hlt loop).
 *
 * Result block at RESULT = 0x30000 (little endian):
 *   +0x00 u32 marker    "QDON" (0x4e4f4451) once everything below is written
 *   +0x04 u32 version   1
 *   +0x08 u32 e820 entries stored
 *   +0x0c u32 cpuid entries stored
 *   +0x10 u32 e820 status: 0 ok (EBX reached 0), 1 CF set, 2 bad signature, 3 table full
 *   +0x100 e820 entries, 20 bytes each: base u64, length u64, type u32
 *   +0x1000 cpuid entries, 24 bytes each: leaf, subleaf, eax, ebx, ecx, edx (u32 each)
 *
 * Build (GNU binutils, Debian package binutils): see build.sh.
 */
        .code16
        .section .text
        .globl _start
_start:
        .fill 0x1f1, 1, 0
        .byte SETUP_SECTS               /* 0x1f1 setup_sects */
        .word 0                         /* 0x1f2 root_flags */
        .long 0                         /* 0x1f4 syssize */
        .word 0                         /* 0x1f8 ram_size */
        .word 0                         /* 0x1fa vid_mode */
        .word 0                         /* 0x1fc root_dev */
        .word 0xaa55                    /* 0x1fe boot_flag */
        .byte 0xeb, entry - 0x202       /* 0x200 jmp short entry */
        .ascii "HdrS"                   /* 0x202 header magic */
        .word 0x0202                    /* 0x206 boot protocol 2.02: no setup_data, no initrd */
        .long 0                         /* 0x208 realmode_swtch */
        .word 0                         /* 0x20c start_sys_seg */
        .word 0                         /* 0x20e kernel_version */
        .byte 0                         /* 0x210 type_of_loader (QEMU writes it) */
        .byte 1                         /* 0x211 loadflags: LOADED_HIGH, so setup goes to 0x10000 */
        .word 0                         /* 0x212 setup_move_size */
        .long 0x100000                  /* 0x214 code32_start */
        .long 0                         /* 0x218 ramdisk_image */
        .long 0                         /* 0x21c ramdisk_size */
        .long 0                         /* 0x220 bootsect_kludge */
        .word 0                         /* 0x224 heap_end_ptr */
        .byte 0                         /* 0x226 ext_loader_ver */
        .byte 0                         /* 0x227 ext_loader_type */
        .long 0                         /* 0x228 cmd_line_ptr */
        .long 0                         /* 0x22c initrd_addr_max */

        .set SETUP_SECTS, 3
        .set RESULT_SEG, 0x3000
        .set E820_AT, 0x100
        .set CPUID_AT, 0x1000
        .set SMAP, 0x534d4150
        .set MARKER, 0x4e4f4451

entry:
        cli
        ljmp $0x1000, $start            /* CS base = file offset 0 */
start:
        mov $0x4000, %ax
        mov %ax, %ss
        mov $0xfff0, %sp
        mov $RESULT_SEG, %ax
        mov %ax, %ds
        mov %ax, %es
        cld
        xor %di, %di                    /* clear the header */
        xor %eax, %eax
        mov $0x40, %cx
        rep stosl
        movl $1, 0x04

        /* -- E820 ------------------------------------------------------------------------ */
        mov $E820_AT, %di
        xor %ebx, %ebx
e820_next:
        movl $0, 0(%di)
        movl $0, 4(%di)
        movl $0, 8(%di)
        movl $0, 12(%di)
        movl $0, 16(%di)
        mov $0xe820, %eax
        mov $20, %ecx
        mov $SMAP, %edx
        int $0x15
        jc e820_cf
        cmp $SMAP, %eax
        jne e820_sig
        add $20, %di
        incl 0x08
        test %ebx, %ebx
        jz cpuid_all
        cmpl $128, 0x08
        jb e820_next
        movl $3, 0x10
        jmp cpuid_all
e820_cf:
        movl $1, 0x10
        jmp cpuid_all
e820_sig:
        movl $2, 0x10

        /* -- CPUID ----------------------------------------------------------------------- */
cpuid_all:
        mov $CPUID_AT, %di
        xor %esi, %esi                  /* basic range: 0 .. min(max, 255) */
        call range
        mov %edx, 0x20                  /* the basic range's last leaf */
        mov $0x40000000, %esi           /* hypervisor range */
        call range
        mov $0x80000000, %esi           /* extended range */
        call range
        mov %edx, 0x24                  /* the extended range's last leaf */
        mov $subleaf_leaves, %bx
next_sub:
        mov %cs:(%bx), %esi
        test %esi, %esi
        jz done
        add $4, %bx
        mov 0x20, %edx
        test %esi, %esi
        jns 1f
        mov 0x24, %edx
1:      cmp %edx, %esi
        ja next_sub
        mov $1, %ebp
2:      call one
        inc %ebp
        cmp $63, %ebp
        jbe 2b
        jmp next_sub

done:
        movl $MARKER, 0x00
halt:
        cli
        hlt
        jmp halt

/* range: ESI = first leaf; entries for leaves ESI..last (ECX=0); returns EDX = last leaf. The
 * last leaf is EAX of the first, limited as the guest probe limits it: at most first+255, and
 * for the hypervisor and extended ranges, anything outside first..first+255 means first. */
range:
        mov %esi, %eax
        xor %ecx, %ecx
        cpuid
        mov %esi, %edx
        add $255, %edx
        cmp %edx, %eax
        jbe 1f
        mov %edx, %eax                  /* above first+255 */
        test %esi, %esi
        jz 1f
        mov %esi, %eax
1:      cmp %esi, %eax
        jae 2f
        mov %esi, %eax                  /* below first */
2:      push %eax
        xor %ebp, %ebp
3:      call one
        pop %eax
        push %eax
        inc %esi
        cmp %eax, %esi
        jbe 3b
        pop %edx
        ret

/* one: an entry for CPUID(ESI, EBP) at ES:DI; DI += 24, count += 1 */
one:
        push %ebx
        mov %esi, %eax
        mov %ebp, %ecx
        cpuid
        mov %esi, 0(%di)
        mov %ebp, 4(%di)
        mov %eax, 8(%di)
        mov %ebx, 12(%di)
        mov %ecx, 16(%di)
        mov %edx, 20(%di)
        add $24, %di
        incl 0x0c
        pop %ebx
        ret

        .balign 4
subleaf_leaves:                         /* the guest probe's SUBLEAF_LEAVES */
        .long 4, 7, 11, 13, 15, 16, 18, 20, 23, 24, 29, 31, 0x8000001d, 0x80000020, 0x80000026, 0

        .fill (SETUP_SECTS + 1) * 512 - (. - _start), 1, 0
        /* the "protected-mode kernel": QEMU needs one; never run */
        .fill 512, 1, 0
