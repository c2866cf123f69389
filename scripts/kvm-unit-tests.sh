#!/usr/bin/env bash
# Runs kvm-unit-tests' x86 tests (x86/unittests.cfg) under hv (`hv boot`) and/or QEMU (the
# command line kvm-unit-tests' own x86/run builds) and prints PASS/FAIL/SKIP per test in
# kvm-unit-tests' style, side by side, with totals.
#
#   scripts/kvm-unit-tests.sh KUT_DIR [hv|qemu|both]
#
# KUT_DIR is a built checkout (`./configure --arch=x86_64 && make`). Environment:
#   HV=path       the hv binary (default: target/release/hv, else target/debug/hv)
#   TESTS="a b"   run only these tests
#   LOGDIR=dir    keep each run's console log there (default: a temporary directory)
#   REUSE=1       take results already in LOGDIR (each run's exit status is kept beside its
#                 log) instead of running those tests again
#
# A test's smp, qemu_params/extra_params (-m, -smp, -append; -cpu host/max, or a model with
# only +features, since hv presents the host CPU), test_args, arch, groups (nodefault), accel,
# check and timeout are honoured. A test needing something hv does not offer (another QEMU
# option or device, a CPU model with features taken away) is skipped under hv with the reason.
# Under hv a FAIL shows the first port/MMIO address the kernel touched that no hv device
# claims (hv notes each one once), which is usually why.
set -u

KUT=${1:?usage: $0 KUT_DIR [hv|qemu|both]}
MODE=${2:-both}
case $MODE in hv | qemu | both) ;; *) echo "mode must be hv, qemu or both" >&2; exit 2 ;; esac
KUT=$(cd "$KUT" && pwd) || exit 2
CFG=$KUT/x86/unittests.cfg
[ -f "$CFG" ] || { echo "$CFG not found: is $KUT a kvm-unit-tests checkout?" >&2; exit 2; }
[ -f "$KUT/config.mak" ] || { echo "$KUT is not configured: ./configure --arch=x86_64 && make" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${HV:-}" ]; then
    for c in "$ROOT/target/release/hv" "$ROOT/target/debug/hv"; do
        [ -x "$c" ] && HV=$c && break
    done
fi
if [ "$MODE" != qemu ] && [ ! -x "${HV:-}" ]; then
    echo "no hv binary: cargo build -p hv-cli (or set HV=)" >&2
    exit 2
fi
LOGDIR=${LOGDIR:-$(mktemp -d)}
mkdir -p "$LOGDIR"
ARCH=$(sed -n 's/^ARCH=//p' "$KUT/config.mak")

PASS() { echo -ne "\e[32mPASS\e[0m"; }
SKIP() { echo -ne "\e[33mSKIP\e[0m"; }
FAIL() { echo -ne "\e[31mFAIL\e[0m"; }

declare -A total
for v in hv qemu; do for r in PASS FAIL SKIP; do total[$v,$r]=0; done; done

# The environment kvm-unit-tests passes as its initrd (scripts/arch-run.bash env_params).
ENVFILE=$LOGDIR/env
{
    echo "KERNEL_VERSION_STRING=$(uname -r)"
    IFS=. read -r kv kp rest <<<"$(uname -r)"
    echo "KERNEL_VERSION=$kv"
    echo "KERNEL_PATCHLEVEL=$kp"
    ks=${rest%%[!0-9]*}
    [ -n "$ks" ] && echo "KERNEL_SUBLEVEL=$ks"
} >"$ENVFILE"

summary_of() { tail -5 "$1" | grep -a '^SUMMARY: ' | sed 's/^SUMMARY: /(/;s/\r\{0,1\}$/)/' | tail -1; }

# hv boot arguments from qemu_params, or "SKIP:reason".
hv_args() {
    local -a p
    eval "p=($1)"
    local out="" i=0
    while [ $i -lt ${#p[@]} ]; do
        local o=${p[$i]} v=${p[$((i + 1))]:-}
        case $o in
        -m)
            local mib=${v%[MmGg]}
            [[ $v == *[Gg] ]] && mib=$((mib * 1024))
            if [ "$mib" -gt 3072 ]; then
                echo "SKIP:needs -m $v (hv keeps guest RAM below its MMIO window at 3 GiB)"
                return
            fi
            out+=" --mem ${mib}M"
            i=$((i + 2))
            ;;
        -smp) out+=" --smp ${v%%,*}"; i=$((i + 2)) ;;
        -enable-kvm) i=$((i + 1)) ;; # hv is KVM
        -append) APPEND=$v; i=$((i + 2)) ;;
        -cpu)
            local model=${v%%,*} feats
            IFS=, read -ra feats <<<"${v#"$model"}"
            for f in "${feats[@]}"; do
                case $f in
                "" | +* | host-phys-bits | migratable=no) ;;
                *) echo "SKIP:needs -cpu $v (hv presents the host CPU; cannot take features away or change it)"; return ;;
                esac
            done
            case $model in host | max | qemu64 | kvm64) ;; *) echo "SKIP:needs CPU model $model (hv presents the host CPU)"; return ;; esac
            i=$((i + 2))
            ;;
        -machine)
            case $v in
            pit=off) ;; # hv's PIT stays quiet unless programmed
            *) echo "SKIP:needs -machine $v"; return ;;
            esac
            i=$((i + 2))
            ;;
        *) echo "SKIP:needs QEMU option $o${v:+ $v}"; return ;;
        esac
    done
    echo "$out"
}

run_qemu() { # name file smp args params timeout -> sets RES, WHY
    local log=$LOGDIR/$1.qemu.log ret
    if [ -n "${REUSE:-}" ] && [ -f "$log.rc" ]; then
        ret=$(cat "$log.rc")
    else
        (cd "$KUT" && eval "TESTNAME=$1 TIMEOUT=$6 ACCEL=kvm x86/run x86/$2 -smp $3 $5 ${4:+-append \"$4\"}") \
            >"$log" 2>&1 </dev/null
        ret=$?
        echo $ret >"$log.rc"
    fi
    # x86/run already applied kvm-unit-tests' status fixup: 0 pass, 77 skip, 124 timeout.
    WHY=$(summary_of "$log")
    case $ret in
    0) RES=PASS ;;
    77) RES=SKIP ;;
    124) RES=FAIL; WHY="(timeout; duration=$6)" ;;
    *)
        RES=FAIL
        local err
        # QEMU's own complaint when there is one (e.g. it aborts setting up -cpu max), else
        # the log's last line.
        err=$(grep -a -m1 '^qemu-system[^:]*: .*error' "$log" | sed 's/^qemu-system[^:]*: //')
        [ -z "$err" ] && err=$(grep -a -m1 '^qemu-system[^:]*: ' "$log" | sed 's/^qemu-system[^:]*: //')
        [ -z "$err" ] && err=$(grep -av '^timeout' "$log" | tr -d '\0\r' | sed 's/^ *//' | grep -a . | tail -1)
        [ -z "$WHY" ] && WHY="(status $ret: $(cut -c1-100 <<<"$err"))"
        ;;
    esac
}

run_hv() { # name file smp args params timeout -> sets RES, WHY
    local log=$LOGDIR/$1.hv.log
    APPEND=$4
    local extra
    extra=$(hv_args "$5")
    if [[ $extra == SKIP:* ]]; then RES=SKIP; WHY="(${extra#SKIP:})"; return; fi
    local secs=${6%s}
    local ret
    if [ -n "${REUSE:-}" ] && [ -f "$log.rc" ]; then
        ret=$(cat "$log.rc")
    else
        # shellcheck disable=SC2086
        "$HV" boot "$KUT/x86/$2" --smp "$3" $extra --append="$APPEND" --initrd "$ENVFILE" \
            --timeout "$secs" >"$log" 2>"$log.err" </dev/null
        ret=$?
        echo $ret >"$log.rc"
    fi
    WHY=$(summary_of "$log")
    local nodev
    nodev=$(grep -a -m1 'no device' "$log.err" | sed 's/^hv: note: //;s/: no device.*//')
    # kvm-unit-tests' mapping (scripts/vmm.bash): guest 0 -> 1 = PASS; all skipped -> the
    # guest writes 38 -> 77 = SKIP.
    case $ret in
    1) RES=PASS ;;
    77) RES=SKIP ;;
    124) RES=FAIL; WHY="(timeout; duration=$6${nodev:+; first unclaimed access: $nodev})" ;;
    *)
        RES=FAIL
        local end
        end=$(grep -av '^hv: note' "$log.err" | tail -1 | sed 's/^hv: //' | cut -c1-100)
        [ $ret -ne 3 ] && WHY="${WHY:+$WHY }(status $ret: $end)"
        [ -n "$nodev" ] && WHY="$WHY (first unclaimed access: $nodev)"
        ;;
    esac
}

skip_reason() { # common skips, as kvm-unit-tests' runner makes them
    local groups=$1 arch=$2 check=$3 file=$4
    if [[ " $groups " == *" nodefault "* ]]; then echo "test marked as manual run only"; return; fi
    if [ -n "$arch" ] && [ "$arch" != "$ARCH" ]; then echo "$arch only"; return; fi
    for c in $check; do
        local path=${c%%=*} value=${c#*=}
        if ! [ -f "$path" ] || [ "$(cat "$path")" != "$value" ]; then echo "$path not equal to $value"; return; fi
    done
    [ -f "$KUT/x86/$file" ] || echo "Test file 'x86/$file' not found"
}

show() { # result why -> formatted cell
    echo "$($1) $2"
}

printf '%-34s %-60s %s\n' TEST "$([ "$MODE" = qemu ] && echo QEMU || echo HV)" "$([ "$MODE" = both ] && echo QEMU)"
one() {
    local name=$1 file=$2 smp=$3 args=$4 params=$5 arch=$6 groups=$7 check=$8 timeout=$9
    [ -z "$name" ] && return
    if [ -n "${TESTS:-}" ] && [[ " $TESTS " != *" $name "* ]]; then return; fi
    # smp may be an expression such as $MAX_SMP.
    MAX_SMP=${MAX_SMP:-$(nproc)}
    smp=$(eval echo "${smp:-1}")
    local why
    why=$(skip_reason "$groups" "$arch" "$check" "$file")
    local hres="" hwhy="" qres="" qwhy=""
    # hv and QEMU run the test at the same time (each result lands in a file).
    for v in hv qemu; do
        [ "$MODE" != both ] && [ "$MODE" != $v ] && continue
        if [ -n "$why" ]; then
            echo "SKIP|($why)" >"$LOGDIR/$name.$v.res"
        else
            ("run_$v" "$name" "$file" "$smp" "$args" "$params" "${timeout:-90s}"
                echo "$RES|$WHY" >"$LOGDIR/$name.$v.res") &
        fi
    done
    wait
    for v in hv qemu; do
        [ "$MODE" != both ] && [ "$MODE" != $v ] && continue
        IFS='|' read -r RES WHY <"$LOGDIR/$name.$v.res"
        total[$v,$RES]=$((total[$v,$RES] + 1))
        if [ $v = hv ]; then hres=$RES; hwhy=$WHY; else qres=$RES; qwhy=$WHY; fi
    done
    local a b
    if [ "$MODE" = qemu ]; then a="$qres $qwhy"; b=""; else a="$hres $hwhy"; b="${qres:+$qres $qwhy}"; fi
    printf '%-34s %-60s %s\n' "$name" "$a" "$b" | sed -e "s/\bPASS\b/$(PASS)/g" -e "s/\bFAIL\b/$(FAIL)/g" -e "s/\bSKIP\b/$(SKIP)/g"
}

# Parse unittests.cfg: [name] sections with key = value lines.
name="" file="" smp="" args="" params="" arch="" groups="" check="" timeout=""
while IFS= read -r line || [ -n "$line" ]; do
    line=${line%%#*}
    if [[ $line =~ ^\[(.*)\]$ ]]; then
        one "$name" "$file" "$smp" "$args" "$params" "$arch" "$groups" "$check" "$timeout"
        name=${BASH_REMATCH[1]} file="" smp="" args="" params="" arch="" groups="" check="" timeout=""
    elif [[ $line =~ ^([a-z_]+)[[:space:]]*=[[:space:]]*(.*)$ ]]; then
        val=${BASH_REMATCH[2]}
        val=${val%"${val##*[![:space:]]}"}
        case ${BASH_REMATCH[1]} in
        file) file=$val ;;
        smp) smp=$val ;;
        test_args) eval "args=$val" ;;
        qemu_params | extra_params) params="$params $val" ;;
        arch) arch=$val ;;
        groups) groups=$val ;;
        check) check=$val ;;
        timeout) timeout=$val ;;
        esac
    fi
done <"$CFG"
one "$name" "$file" "$smp" "$args" "$params" "$arch" "$groups" "$check" "$timeout"

for v in hv qemu; do
    [ "$MODE" != both ] && [ "$MODE" != $v ] && continue
    echo "$v: ${total[$v,PASS]} PASS, ${total[$v,FAIL]} FAIL, ${total[$v,SKIP]} SKIP"
done
echo "logs: $LOGDIR"
