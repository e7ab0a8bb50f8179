#!/bin/sh
# Post-build (BR2_ROOTFS_POST_BUILD_SCRIPT): turn a root with the app, its units and the overlay into
# the appliance root. Buildroot calls it with TARGET_DIR as $1 and the board name (BR2_ROOTFS_POST_SCRIPT_ARGS)
# as $2; `make image` calls the same script on its staged root. Idempotent: running it twice changes nothing.
set -eu

TARGET_DIR=${1:?usage: post-build.sh TARGET_DIR BOARD}
BOARD=${2:?usage: post-build.sh TARGET_DIR BOARD}
COMMON_DIR=$(cd "$(dirname "$0")" && pwd)
BOARD_DIR=$(cd "$COMMON_DIR/../$BOARD" && pwd)
RAUC_KEYRING=${RAUC_KEYRING:-$COMMON_DIR/rauc/dev/keyring.pem}

die() { echo "post-build.sh: $*" >&2; exit 1; }
[ -d "$TARGET_DIR" ] || die "no target directory $TARGET_DIR"
[ -f "$TARGET_DIR/usr/lib/systemd/system/edge-gateway.service" ] || die "edge-gateway.service not installed in $TARGET_DIR"
[ -f "$TARGET_DIR/etc/edge-gateway/gateway.yml" ] || die "rootfs-overlay not applied: no /etc/edge-gateway/gateway.yml"

# The overlay's README documents the source tree, not the appliance.
if [ -f "$TARGET_DIR/README.md" ] && head -n 1 "$TARGET_DIR/README.md" | grep -q '^# rootfs-overlay/'; then
	rm -f "$TARGET_DIR/README.md"
fi

# Mount points on the read-only root: the data partition, the boot partition (U-Boot environment).
install -d -m 0755 "$TARGET_DIR/data" "$TARGET_DIR/boot/firmware" "$TARGET_DIR/var/lib/edge-gateway"

# RAUC: the slot layout of this board and the keyring bundles are verified against.
install -D -m 0644 "$BOARD_DIR/system.conf" "$TARGET_DIR/etc/rauc/system.conf"
install -D -m 0644 "$RAUC_KEYRING" "$TARGET_DIR/etc/rauc/keyring.pem"
# U-Boot boards: where fw_setenv finds the environment (the GRUB board keeps it in grubenv, system.conf).
if [ -f "$BOARD_DIR/fw_env.config" ]; then
	install -D -m 0644 "$BOARD_DIR/fw_env.config" "$TARGET_DIR/etc/fw_env.config"
fi

# Enable the units the way `systemctl enable` would (Buildroot's preset-all agrees, see the preset file).
wants() { # wants TARGET UNIT [UNIT_DIR]
	install -d -m 0755 "$TARGET_DIR/etc/systemd/system/$1.wants"
	ln -sfn "${3:-/usr/lib/systemd/system}/$2" "$TARGET_DIR/etc/systemd/system/$1.wants/$2"
}
wants multi-user.target edge-gateway.service
wants multi-user.target edge-gateway-mark-good.timer
wants local-fs.target data.mount /etc/systemd/system
wants local-fs.target 'var-lib-edge\x2dgateway.mount' /etc/systemd/system
wants local-fs.target 'etc-edge\x2dgateway.mount' /etc/systemd/system
wants local-fs.target boot-firmware.mount /etc/systemd/system

# The service user: Buildroot's package declares it (PYTHON_EDGE_GATEWAY_USERS); a staged root gets it
# from the sysusers entry, through the build host's systemd-sysusers.
if ! grep -q '^edge-gateway:' "$TARGET_DIR/etc/passwd"; then
	command -v systemd-sysusers >/dev/null || die "no edge-gateway user in $TARGET_DIR/etc/passwd and no systemd-sysusers"
	systemd-sysusers --root="$TARGET_DIR" "$TARGET_DIR/usr/lib/sysusers.d/edge-gateway.conf" >/dev/null
fi
grep -q '^dialout:.*edge-gateway' "$TARGET_DIR/etc/group" || die "edge-gateway is not in group dialout"

# Image identity, read by `rauc` bundles (post-image.sh) and by humans on the device.
version=$(sed -n 's/^Version: //p' "$TARGET_DIR"/usr/lib/python3*/site-packages/edge_gateway-*.dist-info/METADATA | head -n 1)
[ -n "$version" ] || die "cannot read the edge-gateway version from its dist-info"
install -d -m 0755 "$TARGET_DIR/etc"
printf 'EDGE_GATEWAY_VERSION=%s\nEDGE_GATEWAY_BOARD=%s\n' "$version" "$BOARD" >"$TARGET_DIR/etc/edge-gateway-release"
chmod 0644 "$TARGET_DIR/etc/edge-gateway-release"
