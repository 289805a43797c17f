#!/usr/bin/env bash
# Kernel matrix: boots stock Debian kernels under QEMU and runs a command inside, as root.
#
#   scripts/vm.sh kernels                               fetch every kernel into target/kernels/
#   scripts/vm.sh run KERNEL [OPTIONS] -- CMD [ARG...]  boot KERNEL, run CMD, exit with CMD's code
#   scripts/vm.sh list                                  the kernel names
#   scripts/vm.sh matrix KERNEL_TESTS                   the kernel matrix of scripts/test.sh:
#                                                       KERNEL_TESTS (the tests/kernel.rs binary)
#                                                       in every MATRIX guest, with the lists of
#                                                       tests its line names (GUEST_CORE, ...)
#                                                       (1800 s each, or VM_TIMEOUT; only
#                                                       the lines VM_LINES=a,b names, if set)
#
# KERNEL: deb12 (Debian 12's stock 6.1) or deb13 (Debian 13's stock 6.12).
# OPTIONS:
#   --lsm LIST     boot with lsm=LIST (e.g. lockdown,capability,landlock,yama,apparmor: no bpf)
#   --append ARGS  more kernel command-line arguments (repeatable)
#   --rwdir DIR    share DIR read-write with the guest (repeatable); target/vm-out always is
#   --timeout S    give up after S seconds (default 1200, env VM_TIMEOUT); exit 124
#   --out FILE     append the guest's output (not the kernel's console) to FILE as well
#   --emulation-exit CODE   a guest killed by QEMU's emulation (below) exits CODE instead
#                  of being booted once more (the matrix resumes its tests itself)
#
# VM_TCG_THREAD=single runs every vCPU on one host thread (QEMU's default here is a thread
# per vCPU): slower, for telling whether a failure is the multi-threaded emulation's.
#
# The guest is QEMU's software emulation (TCG, --disable-kvm): this machine's /dev/kvm cannot
# boot stock kernels. It sees the host's root read-only (throw-away overlays on /etc, /tmp, ...),
# starts in the current directory, has tracefs, bpffs, securityfs and cgroup2 mounted before CMD
# runs, and gets the extracted kernel's own modules. A boot takes ~20 s; syscalls run several
# times slower than on the host, so use guests for correctness, not timing.
#
# Installs what it needs (as root, idempotent): qemu-system-x86, udev (without it vng loses
# the command's output), kmod (depmod), busybox-static, file (vng reads the kernel's version
# with it) from apt, and virtme-ng into target/vmenv from PyPI. Kernels are extracted with
# dpkg-deb into target/kernels/NAME/, never installed into /boot; the guest loads modules from
# there. Debian 13's (and its backports') come through a private apt state in
# target/kernels/.apt-SUITE whose one source is this machine's Debian mirror with that suite,
# so the machine's apt sources and lists stay as they are. A fetched kernel is kept: delete target/kernels/NAME to fetch the newest.
set -euo pipefail

VIRTME_NG_VERSION=1.42
# The kernel matrix: label, kernel, lsm= list ("-": as the kernel boots by default),
# preemption model ("-": the kernel's default, voluntary for Debian's), the lists of
# tests it runs (below: core is GUEST_CORE, plane_a GUEST_PLANE_A, ...).
MATRIX=(
    "deb12 deb12 - - core,plane_a" # 6.1 as shipped: BPF LSM active, Landlock ABI 2
    # 6.1 on a host that does not enable BPF LSM and preempts kernel code: BPF programs
    # may be preempted mid-run there, so agentmon observes through the tracepoints.
    "deb12-nobpf deb12 lockdown,capability,landlock,yama,apparmor full core"
    "deb13 deb13 - - core,plane_b" # 6.12 as shipped: Landlock ABI 6
    # 6.18 from Debian 13's backports as shipped: it preempts kernel code (lazy, its
    # default, named so that the tests expect the tracepoints), so fexit does not
    # observe, and the BPF LSM hooks are preempted mid-check; syscall tracepoints may
    # fault (6.13 on).
    "deb13bpo deb13bpo - lazy core"
    # The same booted preempt=full, where a thread is preempted or moved between its
    # syscall program and the witness, or inside its LSM hook, far more often than
    # under lazy: the witness's mark and the hooks' check state, both per thread, are
    # what keep their answers true there (two tests, ~3 min).
    "deb13bpo-full deb13bpo - full preemptible"
)
# The kernel tests of the matrix, in lists; each guest runs those its MATRIX line names.
# core, in every guest: what depends on the kernel. Each sensor family (process, file,
# dirfd/cwd paths, network, io_uring, privilege, fileless exec, sensitive reads, deep
# paths, file handles, i386 calls), loss accounting, each observation tier, each
# enforcement layer (Landlock, seccomp, the cgroup guard, BPF LSM, containment; where the
# kernel is too old for enforce mode, its refusal with the reason), approvals, and the
# kernel state a daemon leaves pinned.
# plane_a and plane_b: the control plane and the daemon's bookkeeping (restarts, gates,
# expiry, delegation, stalling file systems, full disks), which run the same code on
# either kernel: each runs in one BPF LSM guest, the two halves balanced by their times
# there (each test prints its own), and all of them on the host on the fallback tier.
# A guest runs a test in 6-10x the time (in the deb12 guest an agentmon exec waits 8 s
# for its 115 programs on the tracepoints, 15 s for its 204 on fexit); the whole
# list took 37 minutes in one guest. Tests that measure a race against a timer on the
# host stay there. So do the two that wait out the daemon's 10 s sweeps and restarts
# (network_guards_go_with_their_tasks, drops_are_not_reported_twice_across_a_restart:
# over a minute each under emulation), which test agentmon's bookkeeping. They
# passed in all three guests when they were written; run them there by name with
# `scripts/vm.sh run` when the sweep or the pinned drop counts change.
GUEST_CORE="file_side_effects,observation_tiers_see_the_same_events,\
a_preemptible_kernel_loses_no_event_silently,dirfd_and_cwd_relative_paths,\
double_fork_setsid_grandchild_still_tracked,network,io_uring_is_reported,\
io_uring_requests_are_judged_by_their_paths,openat2_truncations_are_what_the_kernel_did,\
privilege_calls,fileless_exec,sensitive_reads_only_in_the_set,\
untracked_process_produces_nothing,emitted_plus_lost_equals_performed,\
deep_paths_are_never_forged,enforce_denies_out_of_scope,tamper_attempts_fail,\
file_handles_are_seen,sensitive_reads_denied_when_asked,exec_approval_cannot_be_raced,\
observed_compat_calls_are_reported,escaped_forks_stay_enforced,enforce_network_allowlist,\
big_tcp_packets_leave_an_enforced_task,dropped_packets_are_counted,\
harness_capabilities_do_not_reach_the_agent,held_program_is_frozen,rule_kill_ends_the_tree,\
left_cgroup_is_brought_back,enforcement_outlives_the_daemon,\
daemon_kill9_restart_reports_the_gap,full_disk_keeps_watching,\
enforce_refuses_scopes_over_agentmon,approve_deny_timeout_and_race,deny_rules_hold_or_refuse,\
signals_reaching_agentmon_are_reported,stopped_agentmon_is_reported,\
switching_the_preemption_model_is_put_back,preempted_checks_stay_their_own,\
kernel_refusal_floods_are_counted_not_recorded_one_by_one,\
lsm_hooks_are_attached_only_while_a_task_is_enforced,escaped_forks_stay_enforced_after_their_task_ends"
GUEST_PLANE_A="daemon_restart_keeps_sub_tasks,a_kill_held_by_a_file_system_cannot_stop_the_daemon,\
restart_keeps_a_tasks_paths,daemon_restart_keeps_the_gate,\
a_gate_outlives_a_daemon_stopped_before_taking_it,exec_ends_expired_tasks,\
host_names_never_stall_or_widen,daemon_kills_expired_tasks,full_disk_keeps_the_daemon_watching,\
a_file_system_that_does_not_answer_cannot_stop_the_daemon,\
secrets_on_the_command_line_are_hidden,full_disk_fails_closed_when_enforced,\
a_task_that_cannot_be_recorded_is_refused,enforced_delegation,task_verdicts_and_alerts,\
agentmons_priority_is_kept,control_socket_holds_under_a_flood,rules_hot_reload,\
full_disk_kills_when_the_task_says_so,terminal_cannot_stop_agentmon,\
agentmons_programs_are_detached_after_it_ends"
GUEST_PLANE_B="exit_status_is_propagated,a_tasks_root_is_made_in_its_cgroup,a_gate_offer_outlives_its_root,\
daemon_restart_keeps_a_sub_tasks_leftovers,daemon_restart_keeps_leftovers,\
task_events_files_are_kept_from_agents,callers_descriptors_do_not_reach_the_agent,\
an_ended_tasks_events_file_is_let_go,daemon_selectors_attach_agents,enforced_steps_tag_events,\
a_slow_freeze_is_waited_for_then_made_a_kill,reading_agentmons_key_is_tampering,\
events_name_their_container_and_pod,control_rights_stay_with_the_connector,\
enforced_sub_task_of_an_observed_task,\
an_exec_held_on_a_stalling_file_system_cannot_stop_agentmon,\
refusal_floods_are_counted_not_recorded_one_by_one,killing_a_sub_task_ends_what_it_delegated,\
a_task_past_its_limit_is_stopped,mass_delete_in_scope_runs_to_completion,\
an_agents_file_system_cannot_stop_the_enricher,cli_talks_only_to_agentmon"
GUEST_PREEMPTIBLE="a_preemptible_kernel_loses_no_event_silently,preempted_checks_stay_their_own"
APT_PKGS=(qemu-system-x86 udev kmod busybox-static file)
KERNELS=(deb12 deb13 deb13bpo)
# Debian 13's backports kernel: 6.18, built PREEMPT_LAZY (it preempts kernel code as it
# ships) with syscall tracepoints that may fault (6.13 on).
DEB13BPO_PKG=linux-image-6.18.12+deb13-amd64
CPUS=2
MEMORY=4G
# Seconds a booting guest may take to start its command (boots take ~21 s).
BOOT_LIMIT="${VM_BOOT_LIMIT:-240}"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TARGET="$ROOT/target"
VENV="$TARGET/vmenv"
KCACHE="$TARGET/kernels"
OUT="$TARGET/vm-out"

SAY_AS=vm
. "$HERE/lib.sh"
die() { say "error: $*"; exit 2; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

# ---------------------------------------------------------------- guest side
# Runs inside the guest (vm.sh is visible there through the shared root): mounts what the
# sensors need, says what the guest has, then becomes CMD.
guest() { # BOOTED_MARK CMD...
    # Says to the host that the guest came up (a failure after this is the command's).
    : >"$1" 2>/dev/null || true
    shift
    local mounted=""
    mnt() { # TYPE DIR
        mountpoint -q "$2" 2>/dev/null && return 0
        mkdir -p "$2" 2>/dev/null || true
        if mount -t "$1" "$1" "$2" 2>/dev/null; then
            mounted="$mounted $1"
        else
            say "guest: cannot mount $1 at $2"
        fi
    }
    mnt tracefs /sys/kernel/tracing
    mnt bpf /sys/fs/bpf
    mnt securityfs /sys/kernel/security
    local cg
    cg="$(stat -f -c %T /sys/fs/cgroup 2>/dev/null || echo none)"
    if [ "$cg" != cgroup2fs ] && ! grep -q ' cgroup2 ' /proc/mounts; then
        if [ "$cg" = tmpfs ]; then
            mnt cgroup2 /sys/fs/cgroup/unified
        else
            mnt cgroup2 /sys/fs/cgroup
        fi
    fi
    local lsm
    lsm="$(cat /sys/kernel/security/lsm 2>/dev/null || echo '?')"
    say "guest: kernel $(uname -r), lsm=$lsm, preempt: $(grep -o '([a-z]*)' /sys/kernel/debug/sched/preempt 2>/dev/null || echo '?'), cgroup2 at $(awk '$3=="cgroup2"{print $2}' /proc/mounts | paste -sd, -)${mounted:+, mounted:$mounted}"
    exec "$@"
}

# ---------------------------------------------------------------- host set-up
need_root() { [ "$(id -u)" = 0 ] || die "run as root (installs packages, boots guests as root)"; }

ensure_tools() {
    apt_ensure "${APT_PKGS[@]}" python3-venv
    if ! "$VENV/bin/vng" --version 2>/dev/null | grep -qx "virtme-ng $VIRTME_NG_VERSION"; then
        say "installing virtme-ng $VIRTME_NG_VERSION into ${VENV#"$ROOT"/}"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q "virtme-ng==$VIRTME_NG_VERSION" || die "could not install virtme-ng"
    fi
    export PATH="$VENV/bin:$PATH" # vng runs virtme-run from PATH
}

# The URI of this machine's Debian archive: the repository that serves its own release
# (e.g. bookworm), as configured in its apt sources.
debian_mirror() {
    local codename uri
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    [ -n "$codename" ] || die "cannot tell this machine's Debian release from /etc/os-release"
    uri="$(apt-get indextargets --format '$(RELEASE) $(REPO_URI)' 'Created-By: Packages' 2>/dev/null |
        awk -v s="$codename" '$1 == s {print $2; exit}')"
    [ -n "$uri" ] || die "no apt source for suite $codename in /etc/apt/sources.list{,.d}"
    echo "${uri%/}"
}

# apt-get / apt-cache on a private state dir whose only source is one suite of Debian 13
# (trixie, or trixie-backports), so that this machine's own apt sources stay as they are.
suite_apt() { # SUITE apt-get|apt-cache ARGS...
    local d="$KCACHE/.apt-$1" tool="$2"
    shift 2
    "$tool" -o Dir::Etc::SourceList="$d/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$d/lists" -o Dir::Cache="$d/cache" \
        -o Dir::Cache::Archives="$d/cache/archives" -q "$@"
}

suite_state() { # SUITE
    local suite="$1" d="$KCACHE/.apt-$1" keyring=/usr/share/keyrings/debian-archive-keyring.gpg opts=""
    [ -r "$keyring" ] && opts=" [signed-by=$keyring]"
    mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
    local line
    line="deb$opts $(debian_mirror) $suite main"
    if [ ! -s "$d/sources.list" ] || [ "$(cat "$d/sources.list")" != "$line" ] ||
        [ -z "$(find "$d/lists" -maxdepth 1 -name "*${suite}*Packages*" -print -quit)" ]; then
        echo "$line" >"$d/sources.list"
        say "updating the private $suite apt lists"
        suite_apt "$suite" apt-get update >/dev/null || die "apt-get update of the $suite lists failed"
    fi
}

# The versioned image package that linux-image-amd64 depends on.
image_pkg() { # apt-cache-wrapper...
    "$@" depends linux-image-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}'
}

fetch_kernel() { # NAME
    local name="$1" dir="$KCACHE/$1" pkg tmp suite=""
    if [ -s "$dir/.pkg" ] && [ -n "$(kernel_image "$name" 2>/dev/null)" ]; then
        return 0
    fi
    case "$name" in
        deb12)
            [ "$(. /etc/os-release && echo "${VERSION_CODENAME:-}")" = bookworm ] ||
                die "deb12 is fetched with this machine's apt, which is not Debian 12 (bookworm)"
            pkg="$(image_pkg apt-cache)"
            if [ -z "$pkg" ]; then
                apt-get update -qq
                pkg="$(image_pkg apt-cache)"
            fi
            ;;
        deb13)
            suite=trixie
            suite_state "$suite"
            pkg="$(image_pkg suite_apt "$suite" apt-cache)"
            ;;
        deb13bpo)
            # A fixed version: the newest backports kernel moves on (and from 7.x
            # ships its modules in another package). Where the archive no longer has
            # it, the newest 6.x there, said.
            suite=trixie-backports
            suite_state "$suite"
            pkg="$DEB13BPO_PKG"
            if [ -z "$(suite_apt "$suite" apt-cache show "$pkg" 2>/dev/null | head -1)" ]; then
                pkg="$(suite_apt "$suite" apt-cache pkgnames linux-image-6. 2>/dev/null |
                    grep -E '^linux-image-6\.[0-9.]+\+deb13-amd64$' | sort -V | tail -1)"
                say "deb13bpo: $DEB13BPO_PKG is no longer in $suite; taking $pkg"
            fi
            ;;
        *) die "unknown kernel '$name' (known: ${KERNELS[*]})" ;;
    esac
    [ -n "$pkg" ] || die "$name: cannot find the package linux-image-amd64 depends on"
    say "$name: fetching $pkg"
    tmp="$(mktemp -d "$KCACHE/.dl.XXXXXX")"
    # apt downloads as its sandbox user, which must be able to write here.
    id _apt >/dev/null 2>&1 && chown _apt "$tmp"
    if [ -n "$suite" ]; then
        (cd "$tmp" && suite_apt "$suite" apt-get download "$pkg" >/dev/null)
    else
        (cd "$tmp" && apt-get download -q "$pkg" >/dev/null)
    fi || { rm -rf "$tmp"; die "$name: apt-get download $pkg failed"; }
    rm -rf "$dir"
    mkdir -p "$dir"
    dpkg-deb -x "$tmp"/*.deb "$dir"
    rm -rf "$tmp"
    local mods kver
    # Debs ship no modules.dep: make it once, so the guest can load modules.
    for mods in "$dir"/lib/modules/* "$dir"/usr/lib/modules/*; do
        [ -d "$mods" ] || continue
        kver="$(basename "$mods")"
        depmod -b "${mods%/lib/modules/*}" "$kver" || say "$name: depmod failed (modules may not load)"
    done
    [ -n "$(kernel_image "$name")" ] || die "$name: no kernel image in $pkg"
    echo "$pkg" >"$dir/.pkg"
}

kernel_image() { # NAME -> path of the vmlinuz
    find "$KCACHE/$1/boot" -maxdepth 1 -name 'vmlinuz-*' -print -quit 2>/dev/null | grep .
}

# ---------------------------------------------------------------- run
run() {
    [ $# -ge 1 ] || usage
    local name="$1" lsm="" timeout="${VM_TIMEOUT:-1200}" append=() rw=() out="" emulation_exit=""
    shift
    while [ $# -gt 0 ]; do
        case "$1" in
            --out) out="${2:?--out needs a file}"; shift 2 ;;
            --emulation-exit) emulation_exit="${2:?--emulation-exit needs a code}"; shift 2 ;;
            --lsm) lsm="${2:?--lsm needs a list}"; shift 2 ;;
            --lsm=*) lsm="${1#*=}"; shift ;;
            --append) append+=(-a "${2:?--append needs arguments}"); shift 2 ;;
            --rwdir) rw+=(--rwdir "$(realpath "${2:?--rwdir needs a directory}")"); shift 2 ;;
            --timeout) timeout="${2:?--timeout needs seconds}"; shift 2 ;;
            --) shift; break ;;
            *) die "unknown option $1 (the command goes after --)" ;;
        esac
    done
    [ $# -ge 1 ] || die "no command: scripts/vm.sh run $name [--lsm LIST] -- CMD..."
    need_root
    ensure_tools
    mkdir -p "$KCACHE" "$OUT"
    fetch_kernel "$name"
    local kimg cmd
    kimg="$(kernel_image "$name")"
    [ -n "$lsm" ] && append+=(-a "lsm=$lsm")
    local mark="$OUT/.booted-$$" keep="${CONSOLE_KEEP:-}"
    # Outside the matrix (which names one per line), this run's failed boots only.
    [ -n "$keep" ] || { keep="$OUT/console-$name.log"; rm -f "$keep"; }
    cmd="$(printf '%q ' "$HERE/vm.sh" __guest "$mark" "$@")"
    local rc attempt
    for attempt in 1 2; do
        rm -f "$mark"
        say "booting $name ($(cat "$KCACHE/$name/.pkg"))${lsm:+ lsm=$lsm}"
        # vng writes the guest's output to the host's stdout/stderr by path: a regular file
        # there would be overwritten, so both go through pipes (process substitution).
        # The kernel's console (--verbose) shares stderr: its lines (those stamped
        # "[  12.345678]") go to $mark.console, where a panic's last words stay (a guest
        # that died with no word, exit 255, was seen once); vng's own chatter is dropped.
        # A guest that shows no sign of life within BOOT_LIMIT seconds (a boot that
        # hangs: seen here, QEMU idle for 20 minutes) is stopped and booted once more.
        rc=0
        timeout --kill-after=10 "$timeout" \
            vng --verbose --run "$kimg" --disable-kvm --cpus "$CPUS" --memory "$MEMORY" \
            --rwdir "$OUT" "${rw[@]}" "${append[@]}" ${VM_TCG_THREAD:+"--qemu-opts=-accel tcg,thread=$VM_TCG_THREAD"} --exec "$cmd" </dev/null \
            > >(tee -a "${out:-/dev/null}") 2> >(split_console "$mark.console" >&2) &
        local job=$! waited=0 hung="" looping=""
        while kill -0 "$job" 2>/dev/null; do
            if [ ! -e "$mark" ] && [ "$waited" -ge "$BOOT_LIMIT" ]; then
                say "$name: no sign of life after ${BOOT_LIMIT}s; stopping it"
                hung=1
                kill_tree "$job"
                break
            fi
            if [ $((waited % 5)) = 0 ] && patch_loop "$mark.console"; then
                looping=1
                kill_tree "$job"
                break
            fi
            sleep 1
            waited=$((waited + 1))
        done
        wait "$job" || rc=$?
        [ -n "$hung" ] && rc=255
        [ -n "$looping" ] && rc=255
        [ "$rc" = 124 ] && say "$name: timed out after ${timeout}s"
        if [ "$rc" != 0 ] && [ -s "$mark.console" ]; then
            say "$name: exit $rc; the guest kernel's last messages:"
            tail -n 60 "$mark.console" | sed 's/^/  | /' >&2
        fi
        # The guest kernel killed by a stray int3 in code it was live-patching (static
        # keys, BPF trampolines: text_poke_bp) is QEMU's multi-threaded TCG running a
        # stale translation of that code on another vCPU, which real CPUs never do
        # (seen on deb13 several times, on no host). It says nothing of the command
        # when the guest died of it (exit 255, no status from the command): the guest
        # is booted once more, once, and the retry is said.
        local emulation=""
        if [ "$rc" = 255 ] && { [ -n "$looping" ] || grep -q 'Oops: int3' "$mark.console" 2>/dev/null; }; then
            emulation="${looping:+looped at}"
            emulation="${emulation:-died of}"
        fi
        # A failed boot's console is kept (CONSOLE_KEEP, appended), since the matrix says
        # its key lines again at the end, where CI's excerpt of the output reaches.
        if [ "$rc" != 0 ] && [ -s "$mark.console" ]; then
            { printf '=== %s, boot %s: exit %s\n' "$name" "$attempt" "$rc"; cat "$mark.console"; } \
                >>"$keep"
        fi
        rm -f "$mark.console"
        # A guest that never came up (QEMU or vng failing to start it, seen once as exit
        # 255 with no output) is booted once more; the command's own failure is not retried.
        if [ -n "$emulation" ] && [ -n "$emulation_exit" ]; then
            say "$name: the guest kernel $emulation an int3 in code it was patching (QEMU TCG, not the command)"
            rc="$emulation_exit"
            break
        fi
        if [ -n "$emulation" ] && [ "$attempt" = 1 ]; then
            say "$name: the guest kernel $emulation an int3 in code it was patching (QEMU TCG, not the command); booting it once more"
            continue
        fi
        if [ "$rc" = 0 ] || [ -e "$mark" ] || [ "$rc" = 124 ] || [ "$attempt" = 2 ]; then
            break
        fi
        say "$name: the guest did not come up (exit $rc); booting it once more"
    done
    rm -f "$mark"
    return "$rc"
}

# Copies stdin to stdout but for the guest kernel's console lines, which go to FILE.
split_console() { # FILE
    awk -v f="$1" '{ sub(/\r$/, "") }
        /^\[ *[0-9]+\.[0-9]+\]|KASLR using|^fuse: / { print > f; fflush(f); next }
        /^virtme-run: |^virtme: |^qemu-system-/ { next }
        { print; fflush() }'
}

# Whether the guest's console (FILE) shows a vCPU stuck at the first byte of a kernel
# function: a soft lockup or an RCU stall whose report names a RIP at `function+0x0/`
# (its own, or that of asm_exc_int3 on the stalled CPU as another CPU reports it). That
# is the other face of the stray int3 above: the vCPU runs a stale translation of a
# patch site (an fexit or LSM trampoline's call, patched in and out as agentmon attaches
# and detaches), traps, and the kernel's int3 handler, finding the int3 gone, sends it
# back to the site, for ever. Seen on deb12 at __x64_sys_connect+0x0 (a self-detected
# stall; a test held 900 s, the guest timed out at 1,800 s) and at bpf_lsm_file_open+0x0
# (a soft lockup, then a stall detected by the other CPU at asm_exc_int3+0x0, the site's
# call already whole in memory). A real CPU never loops so on one instruction; the guest
# is stopped and booted once more.
patch_loop() { # FILE
    [ -s "$1" ] || return 1
    awk '/soft lockup - CPU#|rcu: INFO: .*(self-detected stall|detected stalls) on CPU/ { left = 60; next }
        left > 0 { left--; if (/RIP: 0010:/ && /\+0x0\//) found = 1 }
        END { exit !found }' "$1"
}

# The lines of a kernel console (FILE) that say why a guest failed: each report of a
# hung task, stall, lockup, Oops or BUG, with its RIP and call trace (registers,
# module lists and code bytes left out), 80 lines at most.
telling() { # FILE
    grep -E -A36 'blocked for more than|self-detected stall|detected stalls on CPUs|soft lockup|hard LOCKUP|Oops|BUG: |Kernel panic|general protection' "$1" \
        | grep -vE '^\[ *[0-9.]+\] +((RSP|RAX|RDX|RBP|R[0-9][0-9]|FS|CS|CR[0-9]|DR[0-9]|Code|PKRU): |Modules linked in|Hardware name|\? )' \
        | head -n 80 || true
}

# Stops PID and everything under it (vng's QEMU would outlive vng).
kill_tree() { # PID
    local c
    for c in $(pgrep -P "$1"); do kill_tree "$c"; done
    kill -TERM "$1" 2>/dev/null || true
}

# The tests named in LIST (comma-separated) that the guest output in LOG neither passed
# nor failed: those still to run, or those a guest that stopped never finished.
unfinished() { # LIST LOG
    local t out
    out="$(awk '{ sub(/\r$/, "") } $1 == "test" && $(NF-1) == "..." && ($NF == "ok" || $NF == "FAILED") { print $2 }' "$2" 2>/dev/null)"
    for t in ${1//,/ }; do
        grep -qxF "$t" <<<"$out" || printf '%s\n' "$t"
    done | paste -sd, -
}

# Boots a guest this many times at most when QEMU's emulation kills it (an int3 in code
# the guest kernel patches, see run): each boot runs only the tests no earlier boot
# finished, so a late death costs the tests left, not the whole list again. Seen up to
# once in a line's run since the BPF LSM hooks are attached as tasks come and go.
EMULATION_BOOTS="${VM_EMULATION_BOOTS:-5}"

# Runs the kernel tests in every guest of the matrix; fails if any guest fails.
matrix() { # KERNEL_TESTS
    local bin="${1:?matrix needs the kernel test binary}" entry label kernel lsm preempt lists rc start observe
    local failed=() summary=() consoles=() tests list var left log boots bad
    [ -x "$bin" ] || die "$bin is not an executable"
    for entry in "${MATRIX[@]}"; do
        read -r label kernel lsm preempt lists <<<"$entry"
        # VM_LINES=a,b runs only the lines labelled so (a developer's choice; CI runs all).
        if [ -n "${VM_LINES:-}" ] && [[ ",$VM_LINES," != *",$label,"* ]]; then
            continue
        fi
        tests=""
        for list in ${lists//,/ }; do
            var="GUEST_${list^^}"
            [ -n "${!var:-}" ] || die "MATRIX line $label names the list $list, which is not defined"
            tests="${tests:+$tests,}${!var}"
        done
        start=$SECONDS
        # The guest's command travels on the kernel command line (2 KiB at most, base64
        # encoded): a long test list there made every boot hang. It goes in a file.
        local script="$OUT/guest-tests.sh"
        mkdir -p "$OUT" # a clean clone has no target/vm-out before the first boot
        log="$OUT/guest-$label.out"
        : >"$log"
        export CONSOLE_KEEP="$OUT/console-$label.log"
        rm -f "$CONSOLE_KEEP"
        # Stock distribution kernels attach fexit programs: the tests check they are
        # chosen, unless the kernel may preempt them mid-run.
        observe=fexit
        local args=(--timeout "${VM_TIMEOUT:-1800}" --out "$log" --emulation-exit 75)
        [ "$lsm" = - ] || args+=(--lsm "$lsm")
        if [ "$preempt" != - ]; then
            args+=(--append "preempt=$preempt")
            observe=tracepoint
        fi
        left="$tests"
        boots=0
        while :; do
            boots=$((boots + 1))
            printf '#!/bin/sh\nexec env AGENTMON_TESTS="%s" AGENTMON_TEST_SLOWDOWN=5 AGENTMON_TEST_OBSERVE=%s "%s" --test-threads 2\n' \
                "$left" "$observe" "$bin" >"$script"
            rc=0
            run "$kernel" "${args[@]}" -- sh "$script" || rc=$?
            [ "$rc" = 75 ] || break
            left="$(unfinished "$tests" "$log")"
            if [ -z "$left" ]; then
                rc=0 # every test had its result before the guest died
                break
            fi
            if [ "$boots" -ge "$EMULATION_BOOTS" ]; then
                say "$label: QEMU's emulation killed the guest $boots times; giving up"
                rc=255
                break
            fi
            say "$label: booting it once more for the tests no boot finished: $left"
        done
        # A test that failed in a boot the emulation later killed is a failure all the same.
        # The summary names the failed tests and those with no result (a guest that timed
        # out: the test it waited for), since CI may keep only the end of this output.
        local more=""
        [ "$boots" = 1 ] || more=", $boots boots"
        [ "$rc" = 0 ] || consoles+=("$label")
        bad="$(awk '{ sub(/\r$/, "") } $1 == "test" && $NF == "FAILED" { print $2 }' "$log" | paste -sd, -)"
        if [ -n "$bad" ]; then
            more="$more; failed: $bad"
            [ "$rc" != 0 ] || rc=101
        fi
        if [ "$rc" != 0 ]; then
            left="$(unfinished "$tests" "$log")"
            [ -z "$left" ] || more="$more; no result from: $left"
        fi
        summary+=("$label ($lists): exit $rc, $((SECONDS - start)) s$more")
        [ "$rc" = 0 ] || failed+=("$label")
    done
    # What the failed guests' kernels said that tells why (a hung task's stack, a stall,
    # an Oops): CI keeps only the end of this output, where the first telling came early.
    for label in "${consoles[@]}"; do
        [ -s "$OUT/console-$label.log" ] || continue
        say "$label: the guest kernel's telling lines ($OUT/console-$label.log has them all):"
        telling "$OUT/console-$label.log" | sed 's/^/  | /' >&2
    done
    say "kernel matrix:"
    printf '  %s\n' "${summary[@]}" >&2
    [ "${#failed[@]}" = 0 ] || die "kernel tests failed on: ${failed[*]}"
}

case "${1:-}" in
    __guest) shift; guest "$@" ;;
    kernels)
        need_root
        ensure_tools
        mkdir -p "$KCACHE"
        for k in "${KERNELS[@]}"; do
            fetch_kernel "$k"
            say "$k: $(cat "$KCACHE/$k/.pkg") -> $(kernel_image "$k")"
        done
        ;;
    list) printf '%s\n' "${KERNELS[@]}" ;;
    run) shift; run "$@" ;;
    matrix) shift; matrix "$@" ;;
    *) usage ;;
esac
