#!/bin/bash
# A Debian 13 trixie root with trixie's toolchain, QEMU 10.0 and libvirt's
# build dependencies, to build and run libvirt 11.3.0 + the series as trixie
# would.  Built once and cached outside the checkout:
#
#   root=$(scripts/trixie-root.sh)                   create or reuse it, print its path
#   scripts/trixie-root.sh run [--bind DIR]... CMD   run CMD in it (chroot), DIR
#                                                    bind-mounted at the same path
#   scripts/trixie-root.sh run --overlay DIR [--bind DIR]... CMD
#                                                    the same in a copy of it: an
#                                                    overlay whose changes go to DIR
#
# The root is /var/cache/snapdel/trixie-<hash>, where <hash> covers what it
# is built from (the package lists, the code that builds it, the suite and
# the mirror): unchanged inputs reuse the root, changed ones build a new one.  Roots no run has
# used for a week are removed when a new one is built.  A root is built in a temporary directory and renamed into place when complete,
# so an interrupted run never leaves a root that looks done.  The packages
# come from the Debian mirror this machine's apt configuration already uses.
#
# /proc, /sys and /dev are mounted for the chroot in a private mount
# namespace: they are never seen outside it and go away with it, when the
# last process in it ends.  Nothing unmounts them earlier: a daemon CMD
# starts (scripts/daemon.sh) outlives CMD and goes on using them.
set -euo pipefail
. "$(dirname "$0")/common.sh"

CACHE=/var/cache/snapdel
SUITE=$DEBIAN_SUITE
ARCH=amd64

# Installed in the root on top of debootstrap's buildd variant
# (build-essential), besides libvirt's build dependencies.
PACKAGES=(
    # QEMU 10.0 and its image tools (qemu-img, qemu-io, qemu-nbd)
    qemu-system-x86 qemu-utils
    # the build: meson and ninja, ccache, syntax-check
    meson ninja-build pkgconf ccache git xz-utils clang-format gettext
    # AppArmor, so that virt-aa-helper and the AppArmor driver build and run
    libapparmor-dev apparmor
    # the daemons and the tests (chattr: e2fsprogs is not in trixie's
    # buildd variant)
    dbus adduser iproute2 strace e2fsprogs python3-pytest python3-libvirt python3-lxml
)
# Only where the suite has it.
OPTIONAL_PACKAGES=(qemu-block-extra)

# libvirt 11.3.0's Build-Depends (debian/control of 11.3.0-3+deb13u3,
# resolved for amd64), for when the mirror serves no trixie sources.
BUILD_DEPENDS=(
    debhelper dh-apparmor augeas-tools bash-completion kmod libacl1-dev
    libapparmor-dev libattr1-dev libaudit-dev libblkid-dev libbsd-dev
    libc6-dev libcap-ng-dev libcurl4-gnutls-dev libdevmapper-dev libfuse3-dev
    libglib2.0-dev libglusterfs-dev libgnutls28-dev libiscsi-dev
    libjson-c-dev libnl-3-dev libnl-route-3-dev libnuma-dev libparted-dev
    libpcap0.8-dev libpciaccess-dev librados-dev librbd-dev libreadline-dev
    libsanlock-dev libsasl2-dev libselinux1-dev libssh-dev libssh2-1-dev
    libtasn1-6-dev libtirpc-dev libudev-dev libwireshark-dev libxen-dev
    libxml2-dev libxml2-utils lvm2 meson mount numad open-iscsi po-debconf
    python3-docutils python3 qemu-utils systemtap-sdt-dev xsltproc
)

# The URI of the first enabled 'deb' source for suite $1 in this machine's
# apt configuration, in apt's order: sources.list, then sources.list.d/ (one
# line '.list' files and deb822 '.sources' files).  Only the Debian archive
# counts: component main, and no key other than Debian's archive keyring.
apt_uri() {
    local suite=$1 f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do
        [ -f "$f" ] || continue
        case $f in
            *.list)
                awk -v suite="$suite" '
                    $1 != "deb" { next }
                    {
                        opts = ""; i = 2
                        if ($2 ~ /^\[/) {
                            while (i <= NF && $i !~ /\]$/) opts = opts " " $(i++)
                            opts = opts " " $(i++)
                        }
                    }
                    opts ~ /signed-by=/ && opts !~ /debian-archive-keyring/ { next }
                    $(i + 1) == suite && (" " $0 " ") ~ / main / { print $i; exit }
                ' "$f" ;;
            *.sources)
                awk -v suite="$suite" '
                    function done() {
                        if (types ~ / deb / && suites ~ (" " suite " ") && comps ~ / main / &&
                            tolower(enabled) != " no " &&
                            (key == "" || key ~ /debian-archive-keyring/) && uri != "") {
                            print uri; found = 1; exit
                        }
                        types = suites = comps = enabled = key = uri = ""
                    }
                    /^[ \t]*#/ { next }
                    /^[ \t]*$/ { done(); next }
                    {
                        field = tolower($1); $1 = ""; value = $0 " "
                        if (field == "types:") types = value
                        else if (field == "suites:") suites = value
                        else if (field == "components:") comps = value
                        else if (field == "enabled:") enabled = value
                        else if (field == "signed-by:") key = value
                        else if (field == "uris:") uri = $2
                    }
                    END { if (!found) done() }
                ' "$f" ;;
            *) continue ;;
        esac
    done | sed -n 1p
}

host_release=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$host_release" ] || die "cannot tell this machine's Debian release from /etc/os-release"
MIRROR=$(apt_uri "$host_release")
[ -n "$MIRROR" ] || die "no Debian archive for $host_release in this machine's apt configuration (/etc/apt/sources.list, /etc/apt/sources.list.d/)"
SECURITY=$(apt_uri "$host_release-security")


# Run CMD in ROOT with /proc, /sys (read-only, without the host's security
# and cgroup file systems) and /dev, and each --bind DIR at the same path.
# With --overlay DIR first, CMD runs in a writable copy of ROOT instead: an
# overlay mount whose changes land in DIR/upper (ROOT itself is not written).
in_root() {
    local root=$1
    shift
    unshare --mount --propagation private -- /bin/bash -c '
        set -euo pipefail
        root=$1
        shift
        if [ "${1:-}" = --overlay ]; then
            ov=$(realpath -e "$2")
            shift 2
            mkdir -p "$ov/upper" "$ov/work" "$ov/root"
            mount -t overlay overlay \
                -o "lowerdir=$root,upperdir=$ov/upper,workdir=$ov/work" "$ov/root"
            root=$ov/root
        fi
        while [ "${1:-}" = --bind ]; do
            dir=$(realpath -e "$2")
            mkdir -p "$root$dir"
            mount --bind "$dir" "$root$dir"
            shift 2
        done
        mount -t proc proc "$root/proc"
        mount --bind /sys "$root/sys"
        mount -o remount,bind,ro "$root/sys"
        mount --rbind /dev "$root/dev"
        exec chroot "$root" /usr/bin/env -i HOME=/root LC_ALL=C.UTF-8 TERM="${TERM:-dumb}" \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            DEBIAN_FRONTEND=noninteractive "$@"
    ' in_root "$root" "$@"
}

# The root's apt sources: the suite, its updates and, where this machine
# has a security archive, its security updates; deb-src with $2 = yes.
write_sources() {
    local root=$1 src=$2 types=deb
    [ "$src" = yes ] && types="deb deb-src"
    rm -f "$root/etc/apt/sources.list"
    {
        echo "# Written by the snapdel patch queue (scripts/trixie-root.sh)."
        printf 'Types: %s\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$types" "$MIRROR" "$SUITE" "$SUITE"
        if [ -n "$SECURITY" ]; then
            printf '\nTypes: %s\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
                "$types" "$SECURITY" "$SUITE"
        fi
    } > "$root/etc/apt/sources.list.d/debian.sources"
}

# debootstrap, then the packages, in the temporary directory $1.
build_root() {
    local tmp=$1 apt=(apt-get -q -y -o DPkg::Lock::Timeout=300)

    say "debootstrap $SUITE ($ARCH, variant buildd) from $MIRROR"
    unshare --mount --propagation private -- \
        debootstrap --variant=buildd --arch="$ARCH" \
            --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
            "$SUITE" "$tmp" "$MIRROR" >> "$LOG" 2>&1 ||
        die "debootstrap failed; see $LOG:
$(tail -5 "$LOG")"

    # No daemon starts from a maintainer script in here, and no recommends.
    printf '#!/bin/sh\nexit 101\n' > "$tmp/usr/sbin/policy-rc.d"
    chmod 755 "$tmp/usr/sbin/policy-rc.d"
    printf 'APT::Install-Recommends "false";\nAcquire::Languages "none";\n' \
        > "$tmp/etc/apt/apt.conf.d/90snapdel"
    cp /etc/resolv.conf "$tmp/etc/resolv.conf"

    # deb-src when the mirror serves the suite's sources, for build-dep.
    local src=no
    write_sources "$tmp" yes
    if in_root "$tmp" apt-get -q update >> "$LOG" 2>&1 &&
       [ "$(in_root "$tmp" apt-cache showsrc libvirt 2>/dev/null | grep -c "^Version: $LIBVIRT_VERSION-")" -gt 0 ]; then
        src=yes
    else
        say "no $SUITE sources for libvirt $LIBVIRT_VERSION on the mirror; using the Build-Depends listed here"
        write_sources "$tmp" no
        in_root "$tmp" apt-get -q update >> "$LOG" 2>&1 || die "apt-get update failed in the root; see $LOG"
    fi

    local pkgs=("${PACKAGES[@]}") p
    for p in "${OPTIONAL_PACKAGES[@]}"; do
        if in_root "$tmp" apt-cache show "$p" >/dev/null 2>&1; then
            pkgs+=("$p")
        else
            say "$SUITE has no $p; going on without it"
        fi
    done
    say "installing ${#pkgs[@]} packages and libvirt's build dependencies"
    in_root "$tmp" "${apt[@]}" install "${pkgs[@]}" >> "$LOG" 2>&1 ||
        die "apt-get install failed in the root; see $LOG:
$(tail -5 "$LOG")"
    if [ $src = yes ]; then
        in_root "$tmp" "${apt[@]}" build-dep "libvirt=$(in_root "$tmp" apt-cache showsrc libvirt |
            sed -n "s/^Version: \($LIBVIRT_VERSION-.*\)/\1/p" | sort -V | tail -1)" >> "$LOG" 2>&1
    else
        in_root "$tmp" "${apt[@]}" install "${BUILD_DEPENDS[@]}" >> "$LOG" 2>&1
    fi || die "installing libvirt's build dependencies failed in the root; see $LOG:
$(tail -5 "$LOG")"
    in_root "$tmp" apt-get clean >> "$LOG" 2>&1

    # The user and group QEMU runs as, as libvirt-daemon-driver-qemu's
    # postinst creates them: system user libvirt-qemu (uid 64055 when free)
    # in primary group kvm, home /var/lib/libvirt, no login, and a group
    # libvirt-qemu (gid 64055 when free) it is a member of.  Plus the group
    # 'libvirt' of libvirt-daemon-common (the daemons' socket group).
    in_root "$tmp" /bin/sh -e -c '
        getent group kvm >/dev/null || addgroup --quiet --system kvm
        getent group libvirt >/dev/null || addgroup --quiet --system libvirt
        if ! getent passwd libvirt-qemu >/dev/null; then
            uid=; getent passwd 64055 >/dev/null || uid="--uid 64055"
            adduser --quiet --system --ingroup kvm --disabled-login --disabled-password \
                --home /var/lib/libvirt --no-create-home --gecos "Libvirt Qemu" $uid libvirt-qemu
        fi
        if ! getent group libvirt-qemu >/dev/null; then
            gid=; getent group 64055 >/dev/null || gid="--gid 64055"
            addgroup --quiet --system $gid libvirt-qemu
            adduser --quiet libvirt-qemu libvirt-qemu
        fi
        mkdir -p /var/lib/libvirt' >> "$LOG" 2>&1 || die "creating libvirt-qemu failed; see $LOG"

    printf 'suite=%s\nmirror=%s\nsecurity=%s\ndeb_src=%s\ncreated=%s\n' \
        "$SUITE" "$MIRROR" "$SECURITY" "$src" "$(date -u +%FT%TZ)" > "$tmp/etc/snapdel-root"
}

# What interrupted runs left, and roots no run has used for a week (every
# run touches its root).  Called with the lock held, so no other run is
# building.  Mounts for a root are private to the commands that use it:
# nothing below these directories is mounted here.
prune() {
    local d
    for d in "$CACHE"/.trixie-* "$CACHE"/trixie-*; do
        [ -d "$d" ] || continue
        case $d in
            "$CACHE"/trixie-*) [ -n "$(find "$d" -maxdepth 0 -mtime +7)" ] || continue ;;
        esac
        say "removing $d"
        rm -rf --one-file-system "$d" "$d.log"
    done
}

ensure_root() {
    [ "$(id -u)" -eq 0 ] || die "building or entering the $SUITE root needs root"
    if [ -f "$ROOT/etc/snapdel-root" ]; then
        touch "$ROOT"
        return 0
    fi

    if ! command -v debootstrap >/dev/null; then
        say "installing debootstrap"
        apt-get update -q >/dev/null || die "apt-get update failed; check the machine's apt configuration"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -o DPkg::Lock::Timeout=300 debootstrap >/dev/null || die "apt-get install debootstrap failed"
    fi
    [ -e "/usr/share/debootstrap/scripts/$SUITE" ] || die "this debootstrap does not know $SUITE"

    mkdir -p "$CACHE"
    exec 9> "$CACHE/trixie.lock"
    flock 9
    if [ ! -f "$ROOT/etc/snapdel-root" ]; then
        prune
        TMPROOT=$(mktemp -d "$CACHE/.trixie-$hash.XXXXXX")
        trap 'rm -rf --one-file-system "$TMPROOT"' EXIT
        chmod 755 "$TMPROOT"
        : > "$LOG"
        local t0=$SECONDS
        build_root "$TMPROOT"
        mv -T "$TMPROOT" "$ROOT"
        trap - EXIT
        say "$SUITE root ready in $((SECONDS - t0)) s: $ROOT ($(du -sh --one-file-system "$ROOT" | cut -f1))"
    fi
    exec 9>&-
}

# What the root is built from: the package lists, the functions that build
# it, the suite and the mirror (not how it is entered, so that changing that
# keeps the root).
hash=$({ printf '%s\n' "${PACKAGES[@]}" "${OPTIONAL_PACKAGES[@]}" "${BUILD_DEPENDS[@]}"
         declare -f build_root write_sources
         echo "$SUITE $ARCH $MIRROR $SECURITY"; } | sha256sum | cut -c1-12)
ROOT=$CACHE/trixie-$hash
LOG=$CACHE/trixie-$hash.log

case "${1:-}" in
    "")
        ensure_root
        echo "$ROOT"
        ;;
    run)
        shift
        [ $# -gt 0 ] || die "usage: $0 run [--overlay DIR] [--bind DIR]... CMD [ARG]..."
        ensure_root
        cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
        in_root "$ROOT" "$@"
        ;;
    *) die "usage: $0 [run [--overlay DIR] [--bind DIR]... CMD [ARG]...]" ;;
esac
