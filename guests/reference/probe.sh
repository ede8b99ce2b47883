#!/bin/sh
# qabi guest probe: print what the guest sees of its hardware as framed, checksummed records.
#
# POSIX sh. Runs under busybox (the reference guest) and on an ordinary Linux distribution (over
# SSH). Needs dd, od, base64, sha256sum, wc, mkdir and rm (cp too with QABI_PROBE_BATCH=1), and
# root for full PCI config space and CPUID. Every file is first copied once into a private
# temporary directory, so its size, hash and body describe the same bytes.
#
# Output, ASCII lines on stdout:
#   @@QABI-BEGIN 1
#   @@QABI-INFO <key> <value>                    facts and timestamps, outside records
#   @@QABI-SKIP <path> <reason>                  a file the probe looked for but could not read
#   @@QABI-REC <path> <size> <sha256>            then the body as base64 lines
#   @@QABI-END <path>
#   @@QABI-TRAILER <number of REC records>
#   @@QABI-ERROR <message>                       the probe failed; a TRAILER 0 follows
#
# CPUID is one record per vCPU, path /dev/cpu/N/cpuid, body N x 24 bytes: leaf, subleaf, eax,
# ebx, ecx, edx as u32 little endian, ordered by leaf then subleaf.
#
# Speed: under TCG every fork+exec costs ~10 ms, so the probe counts them. Files are copied with
# one cp per directory (QABI_PROBE_BATCH=1, set by the reference guest, whose busybox cp reads
# plainly) or one dd per file; the memory map's small text files are read by the shell. Sizes
# and hashes take one wc and one sha256sum for all files; files up to $SMALL bytes are
# base64-encoded by the shell from a single od of all of them, larger ones by one base64 each.
# The cpuid device returns consecutive leaves for a longer read, so a leaf range is one dd, all
# reads of a round go through one od, and entries are written with printf octal escapes.

set -u
LC_ALL=C
export LC_ALL
umask 077

BATCH=${QABI_PROBE_BATCH:-0}
TRAILER_DONE=
NL='
'

printf '@@QABI-BEGIN 1\n'

fail() {
    printf '@@QABI-ERROR %s\n' "$*"
    if [ -z "$TRAILER_DONE" ]; then
        TRAILER_DONE=1
        printf '@@QABI-TRAILER 0\n'
    fi
    exit 3
}

tools="dd od base64 sha256sum wc mkdir rm"
[ "$BATCH" = 1 ] && tools="$tools cp"
for tool in $tools; do
    command -v "$tool" >/dev/null 2>&1 || fail "missing tool: $tool (needed by the qabi probe)"
done

T="${TMPDIR:-/tmp}/qabi-probe.$$"
case $T in
    *[!A-Za-z0-9_./-]*) T="/tmp/qabi-probe.$$" ;;
esac
mkdir "$T" 2>/dev/null || fail "cannot create temporary directory $T"
trap 'rm -rf "$T"' EXIT
trap 'exit 4' HUP INT TERM
S="$T/r"    # the staged copy of guest path P is $S$P

info() {
    if read -r _up _rest </proc/uptime 2>/dev/null; then
        printf '@@QABI-INFO %s %s\n' "$1" "$_up"
    fi
}

info uptime-probe-start
if read -r _rel </proc/sys/kernel/osrelease 2>/dev/null; then
    printf '@@QABI-INFO kernel %s\n' "$_rel"
fi

# -- what to read ------------------------------------------------------------------------------
LIST=       # guest paths, in record order
DIRS=       # staging directories to create
NG=0        # copy groups G_1..G_NG: "DIR FILE..."
TEXTS=      # small text files the shell copies and encodes itself
CPUS=       # vCPU numbers with a cpuid device

safe() {
    case $1 in
        *[!A-Za-z0-9_./:+,@=-]*) return 1 ;;
    esac
    return 0
}

skip() {  # skip PATH REASON...: PATH with anything unusual shown as '?'
    _sp=
    _sr=$1
    shift
    while [ -n "$_sr" ]; do
        _st=${_sr#?}
        case ${_sr%"$_st"} in
            [A-Za-z0-9_./:+,@=-]) _sp="$_sp${_sr%"$_st"}" ;;
            *) _sp="$_sp?" ;;
        esac
        _sr=$_st
    done
    printf '@@QABI-SKIP %s %s\n' "$_sp" "$*"
}

group() {  # group DIR FILE...: copy DIR/FILE for each FILE that exists, skip the others
    _gd=$1
    shift
    _gl=
    for _gf in "$@"; do
        if ! safe "$_gd/$_gf"; then
            skip "$_gd/$_gf" "unsafe file name"
        elif [ -e "$_gd/$_gf" ]; then
            _gl="$_gl $_gf"
            LIST="$LIST $_gd/$_gf"
        else
            skip "$_gd/$_gf" "No such file or directory"
        fi
    done
    if [ -n "$_gl" ]; then
        NG=$((NG + 1))
        eval "G_$NG=\"\$_gd\$_gl\""
        DIRS="$DIRS $S$_gd"
    fi
}

if [ -d /sys/firmware/acpi/tables ]; then
    for _dir in /sys/firmware/acpi/tables /sys/firmware/acpi/tables/dynamic; do
        _fl=
        for _f in "$_dir"/*; do
            [ -f "$_f" ] || continue
            if safe "$_f"; then
                _fl="$_fl ${_f##*/}"
            else
                skip "$_f" "unsafe file name"
            fi
        done
        [ -n "$_fl" ] && group "$_dir" $_fl
    done
else
    skip /sys/firmware/acpi/tables "No such file or directory"
fi

group /sys/firmware/dmi/tables smbios_entry_point DMI

_pci=
for _d in /sys/bus/pci/devices/*; do
    [ -e "$_d/config" ] || continue
    _pci=1
    group "$_d" config resource
done
[ -n "$_pci" ] || skip /sys/bus/pci/devices "no PCI devices"

if [ ! -e /dev/cpu/0/cpuid ] && command -v modprobe >/dev/null 2>&1; then
    modprobe cpuid >/dev/null 2>&1
fi
for _c in /sys/devices/system/cpu/cpu[0-9]*; do
    [ -d "$_c" ] || continue
    _n=${_c##*/cpu}
    if [ -r "$_c/online" ] && read -r _on <"$_c/online" && [ "$_on" = 0 ]; then
        continue
    fi
    if [ -c "/dev/cpu/$_n/cpuid" ]; then
        CPUS="$CPUS $_n"
        LIST="$LIST /dev/cpu/$_n/cpuid"
        DIRS="$DIRS $S/dev/cpu/$_n"
    else
        skip "/dev/cpu/$_n/cpuid" "no cpuid device (kernel module cpuid not loaded)"
    fi
done

if [ -d /sys/firmware/memmap ]; then
    _i=0
    while [ -d "/sys/firmware/memmap/$_i" ] && [ $_i -lt 4096 ]; do
        for _k in start end type; do
            LIST="$LIST /sys/firmware/memmap/$_i/$_k"
            TEXTS="$TEXTS /sys/firmware/memmap/$_i/$_k"
        done
        DIRS="$DIRS $S/sys/firmware/memmap/$_i"
        _i=$((_i + 1))
    done
else
    skip /sys/firmware/memmap "No such file or directory"
fi

# -- copying -----------------------------------------------------------------------------------
[ -n "$DIRS" ] && { mkdir -p $DIRS 2>"$T/err" || fail "cannot create staging directories under $T"; }

copy_one() {  # copy_one PATH: a plain read of PATH into $S/PATH, or SKIP with the reason
    if dd if="$1" of="$S$1" bs=65536 2>"$T/err"; then
        return 0
    fi
    _why="unreadable"
    if read -r _line <"$T/err" && [ -n "$_line" ]; then
        _why=${_line##*: }
    fi
    rm -f "$S$1"
    skip "$1" "$_why"
}

_g=1
while [ $_g -le $NG ]; do
    eval "set -- \$G_$_g"
    _gd=$1
    shift
    if [ "$BATCH" = 1 ]; then
        _n=$#
        for _gf in "$@"; do
            set -- "$@" "$_gd/$_gf"
        done
        shift $_n
        if ! cp "$@" "$S$_gd/" 2>"$T/err"; then
            for _gf in "$@"; do
                copy_one "$_gf"
            done
        fi
    else
        for _gf in "$@"; do
            copy_one "$_gd/$_gf"
        done
    fi
    _g=$((_g + 1))
done

for _t in $TEXTS; do  # exact for text without NUL bytes, which is what these files are
    _c=
    _l=
    if [ -r "$_t" ]; then
        while IFS= read -r _l; do
            _c="$_c$_l$NL"
        done <"$_t"
        printf '%s' "$_c$_l" >"$S$_t"
    else
        skip "$_t" "Permission denied"
    fi
done

# -- CPUID -------------------------------------------------------------------------------------
L40=1073741824   # 0x40000000
L80=2147483648   # 0x80000000
X1D=2147483677   # 0x8000001d
SUBLEAF_LEAVES="4 7 11 13 15 16 18 20 23 24 29 31 2147483677 2147483680 2147483686"

# cpuid_reads "LEAF,SUBLEAF,COUNT ...": registers of COUNT consecutive leaves from each position
# -> R (decimal words, 4 per leaf), through one od
cpuid_reads() {
    _want=0
    for _q in $1; do
        _want=$((_want + 4 * ${_q##*,}))
    done
    R=$(for _q in $1; do
            _ql=${_q%%,*}
            _qr=${_q#*,}
            dd if="$DEV" bs=$((${_qr#*,} * 16)) count=1 skip=$(((${_qr%%,*} << 32) | _ql)) \
                iflag=skip_bytes
        done 2>/dev/null | od -An -v -tu4)
    set -- $R
    if [ $# -ne $_want ]; then
        WHY="short read from $DEV ($# of $_want words)"
        return 1
    fi
}

enc() {  # enc WORD...: append the words as u32 little-endian octal escapes to _fmt
    for _v in "$@"; do
        if [ "$_v" = 0 ]; then
            _fmt="$_fmt\\0\\0\\0\\0"
        else
            _fmt="$_fmt\\$((_v >> 6 & 3))$((_v >> 3 & 7))$((_v & 7))\\$((_v >> 14 & 3))$((_v >> 11 & 7))$((_v >> 8 & 7))\\$((_v >> 22 & 3))$((_v >> 19 & 7))$((_v >> 16 & 7))\\$((_v >> 30 & 3))$((_v >> 27 & 7))$((_v >> 24 & 7))"
        fi
    done
}

bits() {  # bits MASK FIRST -> _bl: " n ... " for every set bit n >= FIRST (n <= 63)
    _bl=" "
    _bn=$2
    [ "$1" = 0 ] && return 0
    while [ $_bn -le 63 ]; do
        [ $((($1 >> _bn) & 1)) -eq 1 ] && _bl="$_bl$_bn "
        _bn=$((_bn + 1))
    done
}

upto() {  # upto MAX -> _bl: " 1 2 ... MAX " (MAX bounded to 63)
    _bl=" "
    _bn=1
    while [ $_bn -le "$1" ] && [ $_bn -le 63 ]; do
        _bl="$_bl$_bn "
        _bn=$((_bn + 1))
    done
}

until_state() {  # until_state LEAF REG SHIFT MASK VALUE0: enumerate until the field is 0
    eval "K_$1=until RG_$1=$2 SH_$1=$3 MK_$1=$4 NX_$1=1 DN_$1="
    [ $((($5 >> $3) & $4)) -eq 0 ] && eval "DN_$1=1"
}

leaf0() {  # leaf0 LEAF EAX EBX ECX EDX: subleaf 0 of LEAF, and how to find its other subleaves
    _fmt=
    enc "$1" 0 "$2" "$3" "$4" "$5"
    eval "E_$1=\$_fmt"
    case $1 in
        1) HV=$((($4 >> 31) & 1)) ;;
        4 | 2147483677) until_state "$1" 1 0 31 "$2" ;;              # cache type, eax[4:0]
        11 | 31 | 2147483686) until_state "$1" 3 8 255 "$4" ;;       # level type, ecx[15:8]
        7 | 20 | 23 | 24 | 29) upto "$2"; eval "K_$1=set WS_$1=\$_bl" ;;  # 1..eax
        13) bits $(($2 | ($5 << 32))) 2; eval "K_$1=xsave WS_$1=\" 1\$_bl\"" ;;  # XCR0 components
        15) bits "$5" 1; eval "K_$1=set WS_$1=\$_bl" ;;               # resource ids, edx
        16 | 2147483680) bits "$3" 1; eval "K_$1=set WS_$1=\$_bl" ;;  # resource ids, ebx
        18) eval "K_$1=sgx WS_$1=\" 1 \"" ;;                          # then EPC sections
    esac
}

sub() {  # sub LEAF SUBLEAF EAX EBX ECX EDX: keep the entry if LEAF wants this subleaf
    eval "_k=\${K_$1-}"
    case $_k in
        until)
            eval "_nx=\$NX_$1 _dn=\$DN_$1 _rg=\$RG_$1 _sh=\$SH_$1 _mk=\$MK_$1"
            [ -z "$_dn" ] && [ "$2" -eq "$_nx" ] || return 0
            eval "_v=\${$((_rg + 2))}"
            if [ $(((_v >> _sh) & _mk)) -eq 0 ] || [ "$2" -ge 63 ]; then
                eval "DN_$1=1"
                [ $(((_v >> _sh) & _mk)) -eq 0 ] && return 0
            fi
            eval "NX_$1=$(($2 + 1))"
            ;;
        set | xsave | sgx)
            eval "_ws=\$WS_$1"
            case $_ws in
                *" $2 "*) ;;
                *) return 0 ;;
            esac
            _wa=${_ws%%" $2 "*}
            _wb=${_ws#*" $2 "}
            eval "WS_$1=\"\$_wa \$_wb\""
            if [ "$_k" = xsave ] && [ "$2" = 1 ]; then   # add the XSS components
                bits $(($5 | ($6 << 32))) 2
                for _b in $_bl; do
                    eval "_ws=\$WS_$1"
                    case $_ws in *" $_b "*) ;; *) eval "WS_$1=\"\${_ws}$_b \"" ;; esac
                done
            elif [ "$_k" = sgx ] && [ "$2" = 1 ]; then
                eval "K_$1=until RG_$1=1 SH_$1=0 MK_$1=15 NX_$1=2 DN_$1="
            fi
            ;;
        *) return 0 ;;
    esac
    _fmt=
    enc "$@"
    eval "E_$1=\"\$E_$1\$_fmt\""
}

pending() {  # -> PB, PE: subleaves still to read, in the basic and the extended span, ascending
    PB=" "
    PE=" "
    _pmax=0
    for _pl in $SUBLEAF_LEAVES; do
        eval "_k=\${K_$_pl-}"
        case $_k in
            until)
                eval "_dn=\$DN_$_pl _nx=\$NX_$_pl"
                [ -n "$_dn" ] && continue
                _bl=" "
                _bn=$_nx
                while [ $_bn -lt $((_nx + 4)) ] && [ $_bn -le 63 ]; do
                    _bl="$_bl$_bn "
                    _bn=$((_bn + 1))
                done ;;
            set | xsave | sgx) eval "_bl=\$WS_$_pl" ;;
            *) continue ;;
        esac
        for _b in $_bl; do
            [ "$_b" -gt $_pmax ] && _pmax=$_b
            if [ "$_pl" -ge $L80 ]; then
                case $PE in *" $_b "*) ;; *) PE="$PE$_b " ;; esac
            else
                case $PB in *" $_b "*) ;; *) PB="$PB$_b " ;; esac
            fi
        done
    done
    sorted "$PB"
    PB=$_so
    sorted "$PE"
    PE=$_so
}

sorted() {  # sorted " N ... " -> _so: the numbers 1.._pmax that occur, ascending
    _so=
    [ "$1" = " " ] && return 0
    _bn=1
    while [ $_bn -le $_pmax ]; do
        case $1 in *" $_bn "*) _so="$_so $_bn" ;; esac
        _bn=$((_bn + 1))
    done
}

subblock() {  # subblock FIRST_INDEX STRIDE SPAN_FIRST "S..." "LEAF...": feed the words to sub
    # (words are the caller's positional parameters, passed after these five arguments)
    _xi=$1
    _xst=$2
    _xf=$3
    _xs=$4
    _xl=$5
    shift 5
    for _s in $_xs; do
        for _l in $_xl; do
            _i=$((_xi + (_l - _xf) * 4))
            eval "sub $_l $_s \"\${$_i}\" \"\${$((_i + 1))}\" \"\${$((_i + 2))}\" \"\${$((_i + 3))}\""
        done
        _xi=$((_xi + _xst))
    done
}

cpuid_body() {  # the record of $DEV on stdout
    for _pl in $SUBLEAF_LEAVES; do
        unset "K_$_pl"
    done
    HV=0
    # round 0: leaves 0..0x3f, 0x40000000..0x4000001f, 0x80000000..0x8000003f, and (a guess
    # that usually saves a round) subleaves 1-4 of leaves 4..0x1f
    cpuid_reads "0,0,64 $L40,0,32 $L80,0,64 4,1,28 4,2,28 4,3,28 4,4,28" || return 1
    set -- $R
    MAXB=$1
    [ "$MAXB" -gt 255 ] && MAXB=255
    _n=$MAXB
    [ $_n -gt 63 ] && _n=63
    _l=0
    while [ $_l -le $_n ]; do
        leaf0 $_l "$1" "$2" "$3" "$4"
        shift 4
        _l=$((_l + 1))
    done
    shift $(((63 - _n) * 4))
    MAXH=$1
    if [ "$MAXH" -lt $L40 ] || [ "$MAXH" -gt $((L40 + 255)) ]; then MAXH=$L40; fi
    _n=$((MAXH - L40))
    [ $_n -gt 31 ] && _n=31
    _l=0
    while [ $_l -le $_n ]; do
        leaf0 $((L40 + _l)) "$1" "$2" "$3" "$4"
        shift 4
        _l=$((_l + 1))
    done
    shift $(((31 - _n) * 4))
    MAXE=$1
    if [ "$MAXE" -lt $L80 ] || [ "$MAXE" -gt $((L80 + 255)) ]; then MAXE=$L80; fi
    _n=$((MAXE - L80))
    [ $_n -gt 63 ] && _n=63
    _l=0
    while [ $_l -le $_n ]; do
        leaf0 $((L80 + _l)) "$1" "$2" "$3" "$4"
        shift 4
        _l=$((_l + 1))
    done
    shift $(((63 - _n) * 4))
    # the leaves that have subleaves, in each span
    _bh=31
    [ "$MAXB" -lt 31 ] && _bh=$MAXB
    _eh=$((X1D + 9))
    [ "$MAXE" -lt $_eh ] && _eh=$MAXE
    _ab=
    _ae=
    for _pl in $SUBLEAF_LEAVES; do
        if [ "$_pl" -ge $X1D ]; then
            [ "$_pl" -le $_eh ] && _ae="$_ae $_pl"
        else
            [ "$_pl" -le $_bh ] && _ab="$_ab $_pl"
        fi
    done
    subblock 1 112 4 "1 2 3 4" "$_ab" "$@"
    # leaves beyond what round 0 read (rare: a basic range past 0x3f, and so on)
    for _r in "64 $MAXB" "$((L40 + 32)) $MAXH" "$((L80 + 64)) $MAXE"; do
        set -- $_r
        [ "$2" -ge "$1" ] || continue
        _l=$1
        cpuid_reads "$1,0,$(($2 - $1 + 1))" || return 1
        set -- $R
        while [ $# -ge 4 ]; do
            leaf0 $_l "$1" "$2" "$3" "$4"
            shift 4
            _l=$((_l + 1))
        done
    done
    # further rounds: every subleaf still wanted, one dd per subleaf and span
    _round=0
    while [ $_round -lt 16 ]; do
        pending
        [ -n "$_ab" ] || PB=
        [ -n "$_ae" ] || PE=
        [ -n "$PB$PE" ] || break
        _spec=
        _nb=0
        for _s in $PB; do
            _spec="$_spec 4,$_s,$((_bh - 3))"
            _nb=$((_nb + 1))
        done
        for _s in $PE; do _spec="$_spec $X1D,$_s,$((_eh - X1D + 1))"; done
        cpuid_reads "$_spec" || return 1
        set -- $R
        [ -n "$PB" ] && subblock 1 $(((_bh - 3) * 4)) 4 "$PB" "$_ab" "$@"
        [ -n "$PE" ] && subblock $((_nb * (_bh - 3) * 4 + 1)) $(((_eh - X1D + 1) * 4)) $X1D "$PE" "$_ae" "$@"
        _round=$((_round + 1))
    done
    # the body, ordered by leaf then subleaf
    for _r in "0 $MAXB" "$L40 $MAXH" "$L80 $MAXE"; do
        set -- $_r
        [ "$1" = $L40 ] && [ "$HV" != 1 ] && continue
        _l=$1
        while [ $_l -le "$2" ]; do
            eval "printf \"\$E_$_l\""
            _l=$((_l + 1))
        done
    done
    return 0
}

for _n in $CPUS; do
    DEV=/dev/cpu/$_n/cpuid
    WHY="cannot read $DEV"
    if ! cpuid_body >"$S$DEV" 2>"$T/err"; then
        rm -f "$S$DEV"
        skip "$DEV" "$WHY"
    fi
done

info uptime-probe-staged

# -- emitting ----------------------------------------------------------------------------------
SMALL=96    # files up to this size are base64-encoded by the shell (cheaper than a fork+exec)

FILES=
N=0
for _p in $LIST; do
    if [ -f "$S$_p" ]; then
        FILES="$FILES $S$_p"
        N=$((N + 1))
    fi
done

# the base64 alphabet, _qN = character N
_q0=A _q1=B _q2=C _q3=D _q4=E _q5=F _q6=G _q7=H _q8=I _q9=J _q10=K _q11=L _q12=M _q13=N \
    _q14=O _q15=P _q16=Q _q17=R _q18=S _q19=T _q20=U _q21=V _q22=W _q23=X _q24=Y _q25=Z _q26=a \
    _q27=b _q28=c _q29=d _q30=e _q31=f _q32=g _q33=h _q34=i _q35=j _q36=k _q37=l _q38=m _q39=n \
    _q40=o _q41=p _q42=q _q43=r _q44=s _q45=t _q46=u _q47=v _q48=w _q49=x _q50=y _q51=z _q52=0 \
    _q53=1 _q54=2 _q55=3 _q56=4 _q57=5 _q58=6 _q59=7 _q60=8 _q61=9 _q62=+ _q63=/

# b64words COUNT BYTE...: base64 of the first COUNT decimal byte values -> _b64 (lines)
b64words() {
    _bz=$1
    shift
    _b64=
    _col=0
    while [ "$_bz" -ge 3 ]; do
        _acc=$((($1 << 16) | ($2 << 8) | $3))
        shift 3
        _bz=$((_bz - 3))
        eval "_b64=\"\$_b64\$_q$((_acc >> 18))\$_q$((_acc >> 12 & 63))\$_q$((_acc >> 6 & 63))\$_q$((_acc & 63))\""
        _col=$((_col + 4))
        if [ $_col -ge 76 ]; then
            _b64="$_b64$NL"
            _col=0
        fi
    done
    if [ "$_bz" -eq 2 ]; then
        _acc=$((($1 << 16) | ($2 << 8)))
        eval "_b64=\"\$_b64\$_q$((_acc >> 18))\$_q$((_acc >> 12 & 63))\$_q$((_acc >> 6 & 63))=\""
        _col=1
    elif [ "$_bz" -eq 1 ]; then
        _acc=$(($1 << 16))
        eval "_b64=\"\$_b64\$_q$((_acc >> 18))\$_q$((_acc >> 12 & 63))==\""
        _col=1
    fi
    [ $_col -gt 0 ] && _b64="$_b64$NL"
    return 0
}

RECORDS=0
if [ $N -gt 0 ]; then
    SUMS=$(sha256sum $FILES && wc -c $FILES) || fail "sha256sum or wc failed on the staged files"
    set -- $SUMS
    _need=$((4 * N))
    [ $N -gt 1 ] && _need=$((_need + 2))
    [ $# -eq $_need ] || fail "internal: sha256sum and wc gave $# words for $N files"
    # the small files: one od for all of them, encoded here
    _small=
    _sizes=
    _i=1
    while [ $_i -le $N ]; do
        eval "_z=\${$((2 * N + 2 * _i - 1))} _f=\${$((2 * N + 2 * _i))}"
        if [ "$_z" -le $SMALL ]; then
            _small="$_small $_f"
            _sizes="$_sizes $_i:$_z"
        fi
        _i=$((_i + 1))
    done
    if [ -n "$_small" ]; then
        _bytes=$(od -An -v -tu1 $_small) || fail "od failed on the staged files"
        set -- $_bytes
        for _iz in $_sizes; do
            _z=${_iz#*:}
            [ $# -ge "$_z" ] || fail "internal: od gave fewer bytes than wc counted"
            b64words "$_z" "$@"
            shift "$_z"
            eval "X_${_iz%%:*}=\$_b64"
        done
        [ $# -eq 0 ] || fail "internal: od gave more bytes than wc counted"
        set -- $SUMS
    fi
    _i=1
    while [ $_i -le $N ]; do
        eval "_h=\${$((2 * _i - 1))} _f=\${$((2 * _i))} _z=\${$((2 * N + 2 * _i - 1))} _y=\${$((2 * N + 2 * _i))}"
        [ "$_y" = "$_f" ] || fail "internal: sha256sum and wc disagree on the order of the files"
        _p=${_f#"$S"}
        printf '@@QABI-REC %s %s %s\n' "$_p" "$_z" "$_h"
        if [ "$_z" -le $SMALL ]; then
            eval "printf '%s' \"\$X_$_i\""
        else
            base64 "$_f" || fail "base64 failed on $_p"
        fi
        printf '@@QABI-END %s\n' "$_p"
        RECORDS=$((RECORDS + 1))
        _i=$((_i + 1))
    done
fi

info uptime-probe-end
TRAILER_DONE=1
printf '@@QABI-TRAILER %s\n' "$RECORDS"
