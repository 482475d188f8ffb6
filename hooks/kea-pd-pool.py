#!/usr/bin/python3
"""pd-agent hook: serve an acquired prefix from Kea.

When this host acquires a prefix (PD_KIND=acquired), set the `pd-pools` of
one Kea DHCPv6 subnet to delegate /N prefixes out of it, and make Kea
reload its configuration (SIGHUP). When the acquired prefix is released or
expires, the subnet's pd-pools are emptied and Kea reloaded.

Settings (environment, inherited from pd-agent):
  PD_KEA_CONF           Kea configuration file (plain JSON, no comments) (required)
  PD_KEA_SUBNET_ID      id of the subnet6 entry to change (default: the first)
  PD_KEA_DELEGATED_LEN  length of the prefixes Kea hands out (default 64)
  PD_KEA_PID            pid of kea-dhcp6, or PD_KEA_PIDFILE: where to read it
  PD_KEA_RELOAD         shell command instead of the SIGHUP
"""
import json
import os
import signal
import subprocess
import sys


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
