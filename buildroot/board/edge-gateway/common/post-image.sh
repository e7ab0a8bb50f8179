#!/bin/sh
# Post-image (BR2_ROOTFS_POST_IMAGE_SCRIPT): from rootfs.squashfs and the boot files in BINARIES_DIR make
#   sdcard.img                  boot (vfat) + rootfs A + rootfs B (squashfs) + data (ext4), MBR
#   edge-gateway-<version>.raucb  signed RAUC bundle of rootfs.squashfs, for OTA updates
#   keyring.pem                 the keyring the bundle verifies against (`rauc info --keyring=…`)
# Buildroot calls it with BINARIES_DIR as $1 and the board name as $2; `make image` calls the same script
# with EDGE_GATEWAY_HOST_STAGE=1 (no firmware, U-Boot or kernel: the boot partition gets the boot script
# and config only).
#
# Reproducible: every timestamp is SOURCE_DATE_EPOCH (Buildroot exports it with BR2_REPRODUCIBLE=y), the
# vfat volume id, ext4 UUID + hash seed and MBR disk signature are fixed, ownership is set explicitly (no
# root or fakeroot needed). The bundle's CMS signature carries its signing time; its payload does not.
set -eu

BINARIES_DIR=${1:?usage: post-image.sh BINARIES_DIR BOARD}
BOARD=${2:?usage: post-image.sh BINARIES_DIR BOARD}
TARGET_DIR=${TARGET_DIR:?TARGET_DIR (the root file system the images are made of) must be set}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:?SOURCE_DATE_EPOCH must be set (BR2_REPRODUCIBLE=y, or make image)}
export SOURCE_DATE_EPOCH
COMMON_DIR=$(cd "$(dirname "$0")" && pwd)
BOARD_DIR=$(cd "$COMMON_DIR/../$BOARD" && pwd)
RAUC_CERT=${RAUC_CERT:-$COMMON_DIR/rauc/dev/signing.cert.pem}
RAUC_KEY=${RAUC_KEY:-$COMMON_DIR/rauc/dev/signing.key.pem}
RAUC_KEYRING=${RAUC_KEYRING:-$COMMON_DIR/rauc/dev/keyring.pem}
HOST_STAGE=${EDGE_GATEWAY_HOST_STAGE:-0}
# Fixed identities (any constant will do): vfat volume id (after --invariant, which would set 1234-ABCD),
# data partition UUID (also its directory hash seed).
VFAT_VOLUME_ID=45474231
DATA_UUID=6a9c1e4e-3d2b-4f0a-9c59-0e6d2a7f6b10

if [ -n "${HOST_DIR:-}" ]; then PATH="$HOST_DIR/bin:$HOST_DIR/sbin:$PATH"; fi
PATH="$PATH:/usr/sbin:/sbin"
export PATH
die() { echo "post-image.sh: $*" >&2; exit 1; }
for tool in genimage rauc mkfs.vfat mcopy mke2fs debugfs; do
	command -v "$tool" >/dev/null || die "$tool not found"
done
[ -f "$BINARIES_DIR/rootfs.squashfs" ] || die "no $BINARIES_DIR/rootfs.squashfs"
version=$(sed -n 's/^EDGE_GATEWAY_VERSION=//p' "$TARGET_DIR/etc/edge-gateway-release" 2>/dev/null || true)
[ -n "$version" ] || die "no version in $TARGET_DIR/etc/edge-gateway-release: did post-build.sh run?"

work=$BINARIES_DIR/.post-image
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
stamp() { find "$1" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +; }

# --- p1: boot (vfat) -----------------------------------------------------------------------------------
[ -f "$BOARD_DIR/config.txt" ] && cp "$BOARD_DIR/config.txt" "$BINARIES_DIR/config.txt"
mkdir -p "$work/boot"
grep -v '^#' "$BOARD_DIR/boot-files" | while read -r first second; do
	[ -n "$first" ] || continue
	if [ "$first" = host ]; then path=$second; else path=$first; fi
	if [ -e "$BINARIES_DIR/$path" ]; then
		cp -R "$BINARIES_DIR/$path" "$work/boot/"
	elif [ "$first" = host ] || [ "$HOST_STAGE" != 1 ]; then
		die "boot file $BINARIES_DIR/$path missing"
	fi
done
stamp "$work/boot"
rm -f "$BINARIES_DIR/boot.vfat"
mkfs.vfat -C -n BOOT --invariant -i "$VFAT_VOLUME_ID" "$BINARIES_DIR/boot.vfat" $((64 * 1024)) >/dev/null
# mcopy -m keeps the (stamped) mtimes; names sorted so directory entries come in a fixed order.
(cd "$work/boot" && find . -mindepth 1 -maxdepth 1 -printf '%f\n' | LC_ALL=C sort | while read -r f; do
	MTOOLS_SKIP_CHECK=1 mcopy -i "$BINARIES_DIR/boot.vfat" -s -p -m -Q "$f" ::
done)

# --- p4: data (ext4) -----------------------------------------------------------------------------------
uid=$(awk -F: '$1 == "edge-gateway" { print $3 }' "$TARGET_DIR/etc/passwd")
gid=$(awk -F: '$1 == "edge-gateway" { print $4 }' "$TARGET_DIR/etc/passwd")
if [ -z "$uid" ] || [ -z "$gid" ]; then die "no edge-gateway user in $TARGET_DIR/etc/passwd"; fi
data=$work/data
mkdir -p "$data/edge-gateway/state/wal" "$data/edge-gateway/etc" "$data/edge-gateway/etc.work" "$data/rauc"
chmod 0755 "$data" "$data/edge-gateway" "$data/edge-gateway/etc" "$data/rauc"
chmod 0750 "$data/edge-gateway/state" "$data/edge-gateway/state/wal"
chmod 0700 "$data/edge-gateway/etc.work"
stamp "$data"
rm -f "$BINARIES_DIR/data.ext4"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mke2fs -q -F -t ext4 -b 4096 -L data -U "$DATA_UUID" \
	-E "hash_seed=$DATA_UUID,root_owner=0:0" -d "$data" "$BINARIES_DIR/data.ext4" 256M
# mke2fs -d copies each inode's ctime from the build host; owners and every time are set here instead.
when=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d%H%M%S)
{
	for p in / /lost+found /edge-gateway /edge-gateway/etc /edge-gateway/etc.work /rauc \
		/edge-gateway/state /edge-gateway/state/wal; do
		case $p in /edge-gateway/state*) owner=$uid group=$gid ;; *) owner=0 group=0 ;; esac
		echo "sif $p uid $owner"; echo "sif $p gid $group"
		for t in atime mtime ctime crtime; do echo "sif $p $t $when"; done
	done
} >"$work/owners.debugfs"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w -f "$work/owners.debugfs" "$BINARIES_DIR/data.ext4" >/dev/null 2>&1 \
	|| die "debugfs could not set the data partition's owners"

# --- sdcard.img ----------------------------------------------------------------------------------------
mkdir -p "$work/genimage-root"
rm -f "$BINARIES_DIR/sdcard.img"
genimage --config "$COMMON_DIR/genimage.cfg" --rootpath "$work/genimage-root" --tmppath "$work/genimage-tmp" \
	--inputpath "$BINARIES_DIR" --outputpath "$BINARIES_DIR" >"$work/genimage.log" 2>&1 \
	|| { cat "$work/genimage.log" >&2; die "genimage failed"; }

# --- RAUC bundle ---------------------------------------------------------------------------------------
bundle=$work/bundle
mkdir -p "$bundle"
cp "$BINARIES_DIR/rootfs.squashfs" "$bundle/rootfs.squashfs"
cat >"$bundle/manifest.raucm" <<MANIFEST
[update]
compatible=edge-gateway-$BOARD
version=$version
build=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d%H%M%S)
description=edge-gateway $version ($BOARD)

[bundle]
format=verity

[image.rootfs]
filename=rootfs.squashfs
MANIFEST
stamp "$bundle"
out=$BINARIES_DIR/edge-gateway-$version.raucb
rm -f "$out"
rauc bundle --cert="$RAUC_CERT" --key="$RAUC_KEY" --keyring="$RAUC_KEYRING" "$bundle" "$out" >"$work/rauc.log" 2>&1 \
	|| { cat "$work/rauc.log" >&2; die "rauc bundle failed"; }
cp "$RAUC_KEYRING" "$BINARIES_DIR/keyring.pem"
echo "post-image.sh: $BINARIES_DIR/sdcard.img, $out (compatible edge-gateway-$BOARD, version $version)"
