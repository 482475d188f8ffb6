#!/bin/sh
# pd-agent hook: put an acquired /64 on a bridge and advertise it (SLAAC)
# to the hosts behind it with radvd, as a VM does for its containers.
#
# Settings (environment): PD_BRIDGE (the bridge), PD_RADVD_DIR (where
# radvd's config and pid file live; default /run/pd-radvd-$PD_BRIDGE).
set -eu
[ "${PD_KIND:-}" = acquired ] || exit 0
bridge=${PD_BRIDGE:?set PD_BRIDGE}
dir=${PD_RADVD_DIR:-/run/pd-radvd-$bridge}
mkdir -p "$dir"
conf="$dir/radvd.conf"
pidfile="$dir/radvd.pid"
addr="${PD_PREFIX}1"
stop_radvd() {
  if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile"; fi
}
case "$PD_EVENT" in
  acquired|renewed)
    [ "$PD_PREFIX_LEN" = 64 ] || { echo "bridge-radvd: need a /64, got /$PD_PREFIX_LEN" >&2; exit 1; }
    ip -6 addr replace "$addr/64" dev "$bridge" nodad
    cat > "$conf.new" <<CONF
interface $bridge {
  AdvSendAdvert on;
  MinRtrAdvInterval 3;
  MaxRtrAdvInterval 10;
  prefix $PD_PREFIX/64 {
    AdvOnLink on;
    AdvAutonomous on;
    AdvValidLifetime $PD_VALID_LIFETIME;
    AdvPreferredLifetime $PD_PREFERRED_LIFETIME;
  };
};
CONF
    if [ -f "$pidfile" ] && cmp -s "$conf.new" "$conf" && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      rm -f "$conf.new"; exit 0
    fi
    mv "$conf.new" "$conf"
    stop_radvd
    radvd -C "$conf" -p "$pidfile" -u root ;;
  released|expired|declined|replaced)
    stop_radvd
    ip -6 addr del "$addr/64" dev "$bridge" 2>/dev/null || true ;;
esac
