#!/bin/sh
# pd-agent hook: number this router's own LAN out of the prefix it acquired,
# and advertise it to the hosts there with radvd (SLAAC).
#
# The LAN gets the first /64 of the acquired prefix (the whole prefix when
# it is a /64, as a VM's for its containers): the address <that /64>::1 on
# PD_LAN_IFACE, and router advertisements carrying the /64 with the
# prefix's lifetimes. With PD_RESERVE_LAN=1, the pool hooks
# (dhcpd-prefix6.py, kea-pd-pool.py) delegate only the rest.
#
# When the acquired prefix is released or expires, the /64 is withdrawn:
# radvd advertises it once more with valid and preferred lifetime 0 and
# router lifetime 0 (hosts deprecate their addresses and drop the default
# route), then stops, and the address is removed.
#
# Settings (environment, inherited from pd-agent): PD_LAN_IFACE (the LAN
# interface; PD_BRIDGE is the older name), PD_RADVD_DIR (radvd's config and
# pid file; default /run/pd-radvd-$PD_LAN_IFACE).
set -eu
[ "${PD_KIND:-}" = acquired ] || exit 0
lan=${PD_LAN_IFACE:-${PD_BRIDGE:?set PD_LAN_IFACE}}
dir=${PD_RADVD_DIR:-/run/pd-radvd-$lan}
mkdir -p "$dir"
conf="$dir/radvd.conf"
pidfile="$dir/radvd.pid"
[ "$PD_PREFIX_LEN" -le 64 ] || { echo "lan-radvd: need a /64 or shorter, got /$PD_PREFIX_LEN" >&2; exit 1; }
# The first /64 of the prefix, and its first address.
set -- $(python3 -c 'import ipaddress,sys; n = ipaddress.IPv6Network(sys.argv[1] + "/64", strict=False); print(n.network_address, n.network_address + 1)' "$PD_PREFIX")
lan64=$1 addr=$2

radvd_conf() { # valid preferred router-lifetime
  cat <<CONF
interface $lan {
  AdvSendAdvert on;
  MinRtrAdvInterval 3;
  MaxRtrAdvInterval 10;
  AdvDefaultLifetime $3;
  prefix $lan64/64 {
    AdvOnLink on;
    AdvAutonomous on;
    AdvValidLifetime $1;
    AdvPreferredLifetime $2;
  };
};
CONF
}
stop_radvd() {
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    # radvd sends its final advertisement on the way out.
    i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
    rm -f "$pidfile"
  fi
}
case "$PD_EVENT" in
  acquired|renewed)
    ip -6 addr replace "$addr/64" dev "$lan" nodad
    radvd_conf "$PD_VALID_LIFETIME" "$PD_PREFERRED_LIFETIME" 1800 > "$conf.new"
    if [ -f "$pidfile" ] && cmp -s "$conf.new" "$conf" && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      rm -f "$conf.new"; exit 0
    fi
    mv "$conf.new" "$conf"
    stop_radvd
    radvd -C "$conf" -p "$pidfile" -u root ;;
  released|expired|declined|replaced)
    stop_radvd
    # One more radvd, advertising the /64 with lifetime 0 (it sends an
    # advertisement at start), stopped a moment later.
    radvd_conf 0 0 0 > "$conf"
    radvd -C "$conf" -p "$pidfile" -u root
    sleep 1
    stop_radvd
    ip -6 addr del "$addr/64" dev "$lan" 2>/dev/null || true ;;
esac
