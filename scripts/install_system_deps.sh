#!/usr/bin/env bash
# Installs the Debian packages recon can use when they are missing and we are allowed to (root + apt-get):
#   libusb-1.0-0  needed by open3d (the optional `mesh` extra)
#   chromium      a headless browser for the viewer's browser tests (they skip without it)
# Never fails the set-up: without them only those optional parts are unusable.
set -u

can_apt() { command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; }
updated=0
apt_install() {  # apt_install PACKAGE: quiet install, apt-get update once
  if [ "$updated" = "0" ]; then
    apt-get update -qq >/dev/null 2>&1
    updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null 2>&1
}

if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  if can_apt; then
    echo "recon setup: installing libusb-1.0-0 (needed by open3d)"
    apt_install libusb-1.0-0 \
      || echo "recon setup: could not install libusb-1.0-0; open3d (the 'mesh' extra) will not import"
  else
    echo "recon setup: libusb-1.0-0 is missing and cannot be installed here (need root + apt-get);" \
         "open3d (the 'mesh' extra) will not import: sudo apt-get install libusb-1.0-0"
  fi
fi

if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
   && ! command -v google-chrome >/dev/null 2>&1; then
  if can_apt; then
    echo "recon setup: installing chromium (headless browser for the viewer tests)"
    apt_install chromium \
      || echo "recon setup: could not install chromium; the viewer's browser tests will be skipped"
  else
    echo "recon setup: chromium is missing and cannot be installed here (need root + apt-get);" \
         "the viewer's browser tests will be skipped: sudo apt-get install chromium"
  fi
fi
exit 0
