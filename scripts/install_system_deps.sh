#!/usr/bin/env bash
# Installs the Debian package open3d needs (libusb-1.0-0) when it is missing and we are allowed to.
# Never fails the set-up: without it only the optional `mesh` extra (open3d) is unusable.
set -u
if ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  echo "recon setup: installing libusb-1.0-0 (needed by open3d)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0) >/dev/null 2>&1 \
    || echo "recon setup: could not install libusb-1.0-0; open3d (the 'mesh' extra) will not import"
else
  echo "recon setup: libusb-1.0-0 is missing and cannot be installed here (need root + apt-get);" \
       "open3d (the 'mesh' extra) will not import: sudo apt-get install libusb-1.0-0"
fi
exit 0
