#!/usr/bin/python3
"""pd-agent hook: serve an acquired prefix from Kea.

When this host acquires a prefix (PD_KIND=acquired), set the `pd-pools` of
one Kea DHCPv6 subnet to delegate /N prefixes out of it, and make Kea
reload its configuration (SIGHUP). When the acquired prefix is released or
expires, the subnet's pd-pools are emptied and Kea reloaded.

With PD_RESERVE_LAN=1 the first /N block, which holds this router's own
LAN /64 (see lan-radvd.sh, run before this hook), is kept out of the pool:
the pools are the rest of the prefix, as aligned blocks (a /60 pooled as
/64s: one /64, /63, /62 and /61, 15 /64s in all), and the subnet's
`subnet` becomes the LAN /64.

Settings (environment, inherited from pd-agent):
  PD_KEA_CONF           Kea configuration file (plain JSON, no comments) (required)
  PD_KEA_SUBNET_ID      id of the subnet6 entry to change (default: the first)
  PD_KEA_DELEGATED_LEN  length of the prefixes Kea hands out (default 64)
  PD_RESERVE_LAN        1: keep the first /N block for this router's LAN
  PD_KEA_PID            pid of kea-dhcp6, or PD_KEA_PIDFILE: where to read it
  PD_KEA_RELOAD         shell command instead of the SIGHUP
"""
import ipaddress
import json
import os
import signal
import subprocess
import sys


def rest_of(prefix, plen, dlen):
    """`prefix`/`plen` less its first /`dlen` block, as aligned blocks:
    the sibling of the first block's enclosing prefix at each length."""
    base = int(ipaddress.IPv6Address(prefix))
    return [
        {"prefix": str(ipaddress.IPv6Address(base + (1 << (128 - k)))), "prefix-len": k, "delegated-len": dlen}
        for k in range(dlen, plen, -1)
    ]


def main():
    if os.environ.get("PD_KIND") != "acquired":
        return
    event = os.environ["PD_EVENT"]
    conf = os.environ["PD_KEA_CONF"]
    cfg = json.load(open(conf))
    subnets = cfg["Dhcp6"]["subnet6"]
    want = os.environ.get("PD_KEA_SUBNET_ID")
    subnet = next((s for s in subnets if want is None or str(s.get("id")) == want), None)
    if subnet is None:
        sys.exit(f"kea-pd-pool: no subnet6 with id {want} in {conf}")
    if event in ("acquired", "renewed"):
        plen = int(os.environ["PD_PREFIX_LEN"])
        dlen = int(os.environ.get("PD_KEA_DELEGATED_LEN", "64"))
        if dlen < plen:
            sys.exit(f"kea-pd-pool: cannot delegate /{dlen} out of a /{plen}")
        if os.environ.get("PD_RESERVE_LAN", "0") in ("1", "on", "yes", "true"):
            if dlen == plen or plen > 64:
                sys.exit(f"kea-pd-pool: nothing left to delegate as /{dlen} out of a /{plen} once its LAN /64 is kept")
            pools = rest_of(os.environ["PD_PREFIX"], plen, dlen)
            subnet["subnet"] = f"{os.environ['PD_PREFIX']}/64"
        else:
            pools = [{"prefix": os.environ["PD_PREFIX"], "prefix-len": plen, "delegated-len": dlen}]
    elif event in ("released", "expired", "declined", "replaced"):
        pools = []
    else:
        return
    if subnet.get("pd-pools") == pools:
        return  # a renewal of the same prefix: nothing to do
    subnet["pd-pools"] = pools
    tmp = conf + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=2)
    os.replace(tmp, conf)
    cmd = os.environ.get("PD_KEA_RELOAD")
    if cmd:
        subprocess.run(cmd, shell=True, check=True)
        return
    pid = os.environ.get("PD_KEA_PID") or open(os.environ["PD_KEA_PIDFILE"]).read().strip()
    os.kill(int(pid), signal.SIGHUP)


if __name__ == "__main__":
    main()
