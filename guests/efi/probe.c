/* qabi's EFI hand-off probe: what OVMF hands to a boot loader, recorded into RAM for the host.
 *
 * OVMF starts it as a boot image (QEMU's -kernel, loaded through fw_cfg). It:
 *   1. allocates a 256 KiB result buffer below 4 GiB (EfiLoaderData);
 *   2. records CPUID of the boot vCPU (the ranges and subleaves the guest probe reads, as
 *      guests/payload/payload.S does), the EFI configuration table (GUID, pointer: ACPI, SMBIOS,
 *      SMBIOS3, TCG2 final events...), the Secure Boot variables SecureBoot, SetupMode, PK, KEK,
 *      db, dbx, AuditMode, DeployedMode (attributes and raw bytes: the host hashes them), and
 *      last the UEFI memory map;
 *   3. announces the buffer: one page allocated at the first free fixed address of MAILBOXES
 *      (never 0x30000: with SMM that is SMBASE) gets the buffer's address, marker last;
 *   4. halts for good (cli; hlt), never calling ExitBootServices.
 *
 * Result layout (little endian), at the buffer:
 *   +0x00 u32 marker "QEFI" (written last)   +0x04 u32 version (1)
 *   +0x08 u32 cpuid entries                  +0x0c u32 memory-map bytes
 *   +0x10 u32 descriptor size                +0x14 u32 descriptor version
 *   +0x18 u32 configuration-table entries    +0x1c u32 variables
 *   +0x20 u32 status (bit 0: the memory map did not fit)
 *   +0x24 u32 the system table's revision (UEFI version)
 *   +0x28 u32 the firmware revision      +0x2c u32 firmware vendor length (UTF-16 units, <= 128)
 *   +0x30 firmware vendor (UTF-16, at most 128 units)
 *   +0x100 configuration table, 24 bytes each: GUID (16), pointer (u64); at most 64
 *   +0x800 variables, 16 bytes each: attributes, size, offset of the bytes, EFI status (low 32)
 *   +0x1000 cpuid entries, 24 bytes each: leaf, subleaf, eax, ebx, ecx, edx; at most 768
 *   +0x6000 memory map as GetMemoryMap gave it (at most 0xA000 bytes)
 *   +0x10000 variable bytes (at most 0x30000)
 * Mailbox page: +0 u32 "QEFA" (written last), +4 u32 version (1), +8 u64 buffer address.
 */
#include <efi.h>
#include <efilib.h>

#define RESULT_PAGES 64
#define MAX_CONFIG 64
#define CPUID_AT 0x1000
#define MAX_CPUID 768
#define MEMMAP_AT 0x6000
#define MEMMAP_MAX 0xA000
#define VARS_AT 0x800
#define VARDATA_AT 0x10000
#define VARDATA_MAX 0x30000

static const UINT64 MAILBOXES[] = {0x00300000, 0x00500000, 0x00700000, 0x01100000};
static const UINT32 SUBLEAF_LEAVES[] = {4, 7, 11, 13, 15, 16, 18, 20, 23, 24, 29, 31,
                                        0x8000001d, 0x80000020, 0x80000026};

static EFI_GUID global_guid = {0x8be4df61, 0x93ca, 0x11d2, {0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c}};
static EFI_GUID security_guid = {0xd719b2cb, 0x3d3a, 0x4596, {0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f}};

static UINT8 *result;
static UINT32 n_cpuid;

static void put32(UINTN off, UINT32 v) { *(volatile UINT32 *)(result + off) = v; }

static void cpuid(UINT32 leaf, UINT32 sub, UINT32 r[4])
{
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static void one(UINT32 leaf, UINT32 sub)
{
    UINT32 r[4];
    UINT32 *e;
    if (n_cpuid >= MAX_CPUID)
        return;
    cpuid(leaf, sub, r);
    e = (UINT32 *)(result + CPUID_AT + 24 * n_cpuid);
    e[0] = leaf; e[1] = sub; e[2] = r[0]; e[3] = r[1]; e[4] = r[2]; e[5] = r[3];
    n_cpuid++;
}

/* leaves first..last (subleaf 0); last as the guest probe limits it */
static UINT32 range(UINT32 first)
{
    UINT32 r[4], last, leaf;
    cpuid(first, 0, r);
    last = r[0];
    if (last > first + 255)
        last = first ? first : first + 255;
    if (last < first)
        last = first;
    for (leaf = first;; leaf++) {
        one(leaf, 0);
        if (leaf == last)
            break;
    }
    return last;
}

static void record_cpuid(void)
{
    UINT32 basic, ext, i, s;
    basic = range(0);
    range(0x40000000);
    ext = range(0x80000000);
    for (i = 0; i < sizeof(SUBLEAF_LEAVES) / sizeof(SUBLEAF_LEAVES[0]); i++) {
        UINT32 leaf = SUBLEAF_LEAVES[i];
        if (leaf > ((leaf & 0x80000000) ? ext : basic))
            continue;
        for (s = 1; s <= 63; s++)
            one(leaf, s);
    }
    put32(0x08, n_cpuid);
}

static void record_config(EFI_SYSTEM_TABLE *st)
{
    UINTN i, n = st->NumberOfTableEntries;
    if (n > MAX_CONFIG)
        n = MAX_CONFIG;
    for (i = 0; i < n; i++) {
        UINT8 *e = result + 0x100 + 24 * i;
        CopyMem(e, &st->ConfigurationTable[i].VendorGuid, 16);
        *(UINT64 *)(e + 16) = (UINT64)(UINTN)st->ConfigurationTable[i].VendorTable;
    }
    put32(0x18, (UINT32)n);
}

static void record_vars(EFI_SYSTEM_TABLE *st)
{
    static CHAR16 *names[] = {L"SecureBoot", L"SetupMode", L"PK", L"KEK", L"db", L"dbx", L"AuditMode",
                              L"DeployedMode"};
    UINTN i, used = 0;
    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        EFI_GUID *guid = (i == 4 || i == 5) ? &security_guid : &global_guid;
        UINT32 attr = 0;
        UINTN size = VARDATA_MAX - used;
        EFI_STATUS status = uefi_call_wrapper(st->RuntimeServices->GetVariable, 5, names[i], guid, &attr, &size,
                                              result + VARDATA_AT + used);
        UINT32 *e = (UINT32 *)(result + VARS_AT + 16 * i);
        e[0] = attr;
        e[1] = EFI_ERROR(status) ? 0 : (UINT32)size;
        e[2] = (UINT32)(VARDATA_AT + used);
        e[3] = (UINT32)(status & 0xffffffff);
        if (!EFI_ERROR(status))
            used += (size + 7) & ~(UINTN)7;
    }
    put32(0x1c, (UINT32)(sizeof(names) / sizeof(names[0])));
}

static void record_firmware(EFI_SYSTEM_TABLE *st)
{
    UINT32 n = 0;
    CHAR16 *vendor = st->FirmwareVendor;
    put32(0x24, st->Hdr.Revision);
    put32(0x28, st->FirmwareRevision);
    while (vendor && n < 128 && vendor[n]) {
        *(CHAR16 *)(result + 0x30 + 2 * n) = vendor[n];
        n++;
    }
    put32(0x2c, n);
}

static void record_memmap(EFI_SYSTEM_TABLE *st)
{
    UINTN size = MEMMAP_MAX, key = 0, desc_size = 0;
    UINT32 desc_version = 0;
    EFI_STATUS status = uefi_call_wrapper(st->BootServices->GetMemoryMap, 5, &size,
                                          (EFI_MEMORY_DESCRIPTOR *)(result + MEMMAP_AT), &key, &desc_size,
                                          &desc_version);
    if (EFI_ERROR(status)) {
        put32(0x20, 1);
        size = 0;
    }
    put32(0x0c, (UINT32)size);
    put32(0x10, (UINT32)desc_size);
    put32(0x14, desc_version);
}

EFI_STATUS efi_main(EFI_HANDLE image, EFI_SYSTEM_TABLE *st)
{
    EFI_PHYSICAL_ADDRESS buf = 0xFFFFFFFF, box = 0;
    UINTN i;
    (void)image;
    if (EFI_ERROR(uefi_call_wrapper(st->BootServices->AllocatePages, 4, AllocateMaxAddress, EfiLoaderData,
                                    RESULT_PAGES, &buf)))
        goto halt;
    result = (UINT8 *)(UINTN)buf;
    SetMem(result, RESULT_PAGES * 4096, 0);
    put32(0x04, 1);
    record_cpuid();
    record_firmware(st);
    record_config(st);
    record_vars(st);
    for (i = 0; i < sizeof(MAILBOXES) / sizeof(MAILBOXES[0]); i++) {
        box = MAILBOXES[i];
        if (!EFI_ERROR(uefi_call_wrapper(st->BootServices->AllocatePages, 4, AllocateAddress, EfiLoaderData, 1,
                                         &box)))
            break;
        box = 0;
    }
    record_memmap(st);            /* last: the map includes the buffer and the mailbox */
    __asm__ volatile("" ::: "memory");
    put32(0x00, 0x49464551);      /* "QEFI" */
    if (box) {
        volatile UINT32 *m = (volatile UINT32 *)(UINTN)box;
        *(volatile UINT64 *)(m + 2) = buf;
        m[1] = 1;
        __asm__ volatile("" ::: "memory");
        m[0] = 0x41464551;        /* "QEFA" */
    }
halt:
    for (;;)
        __asm__ volatile("cli; hlt");
    return EFI_SUCCESS;
}
