#!/usr/bin/env bash
# English prose for SAE training without downloads at run time: the Debian `fortunes` package
# (quotations, stories, definitions; read by jaxcirc.tasks._corpus.prose_text).
set -euo pipefail
if [ ! -d /usr/share/games/fortunes ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y --no-install-recommends fortunes
fi
ls /usr/share/games/fortunes | head -3
