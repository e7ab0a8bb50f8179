# U-Boot boot script (boot.scr) for RAUC A/B on QEMU aarch64 virt.
# BOOT_ORDER lists the slots to try; BOOT_x_LEFT counts the attempts left on each. RAUC rewrites both
# (fw_setenv) when it installs a bundle; `rauc status mark-good` refills the booted slot's counter.
# The kernel lives in the slot (/boot/Image in the squashfs root), so an update replaces it too.
# The device tree is the one QEMU generated (${fdtcontroladdr}).

test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 3
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 3

setenv bootargs_base "console=ttyAMA0,115200 rootfstype=squashfs ro rootwait panic=5"
setenv slot_part
for BOOT_SLOT in "${BOOT_ORDER}"; do
  if test -n "${slot_part}"; then
    # a slot is already chosen
  elif test "x${BOOT_SLOT}" = "xA"; then
    if test ${BOOT_A_LEFT} -gt 0; then
      setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
      echo "RAUC: booting slot A, ${BOOT_A_LEFT} attempts left"
      setenv slot_part 2
      setenv bootargs "${bootargs_base} root=/dev/vda2 rauc.slot=A"
    fi
  elif test "x${BOOT_SLOT}" = "xB"; then
    if test ${BOOT_B_LEFT} -gt 0; then
      setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
      echo "RAUC: booting slot B, ${BOOT_B_LEFT} attempts left"
      setenv slot_part 3
      setenv bootargs "${bootargs_base} root=/dev/vda3 rauc.slot=B"
    fi
  fi
done

if test -z "${slot_part}"; then
  echo "RAUC: no slot has attempts left; resetting the counters and rebooting"
  setenv BOOT_A_LEFT 3
  setenv BOOT_B_LEFT 3
  saveenv
  reset
fi

saveenv
load virtio 0:${slot_part} ${kernel_addr_r} /boot/Image
booti ${kernel_addr_r} - ${fdtcontroladdr}
