#!/usr/bin/python3
"""pd-agent hook: serve an acquired prefix from ISC dhcpd -6.

When this host acquires a prefix (PD_KIND=acquired), rewrite the line
marked `# pd-agent:prefix6` in dhcpd.conf into

    prefix6 <first /N> <last /N> /N; # pd-agent:prefix6

so dhcpd delegates /N prefixes out of it, then restart dhcpd (it has no
reload). When the acquired prefix is released or expires, the line is
turned into a comment and dhcpd restarted, so nothing is delegated out of a
prefix this host no longer holds.

Settings (environment, inherited from pd-agent):
  PD_DHCPD_CONF          dhcpd.conf holding the marker line (required)
  PD_DHCPD_DELEGATED_LEN length of the prefixes dhcpd hands out (default 60)
  PD_DHCPD_RESTART       shell command restarting dhcpd; default: kill the
                         pid in PD_DHCPD_PIDFILE and start
                         `dhcpd -6 -q -cf CONF -lf PD_DHCPD_LEASES -pf PIDFILE PD_DHCPD_IFACE`
"""
import ipaddress
import os
import re
import signal
import subprocess
import sys
import time

MARK = "# pd-agent:prefix6"


def pool_line(prefix, plen, dlen):
    net = ipaddress.IPv6Network(f"{prefix}/{plen}")
    if dlen < plen or dlen > 128:
        sys.exit(f"dhcpd-prefix6: cannot delegate /{dlen} out of {net}")
    first = net.network_address
    last = ipaddress.IPv6Address(int(net.broadcast_address) & ~((1 << (128 - dlen)) - 1))
    return f"prefix6 {first} {last} /{dlen}; {MARK}"


def restart(conf):
    cmd = os.environ.get("PD_DHCPD_RESTART")
    if cmd:
        subprocess.run(cmd, shell=True, check=True)
        return
    pidfile = os.environ["PD_DHCPD_PIDFILE"]
    try:
        pid = int(open(pidfile).read().strip())
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.05)
    except (OSError, ValueError):
        pass
    leases = os.environ["PD_DHCPD_LEASES"]
    if not os.path.exists(leases):
        open(leases, "w").close()
    subprocess.run(
        ["dhcpd", "-6", "-q", "-cf", conf, "-lf", leases, "-pf", pidfile, os.environ["PD_DHCPD_IFACE"]],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main():
    if os.environ.get("PD_KIND") != "acquired":
        return
    event = os.environ["PD_EVENT"]
    conf = os.environ["PD_DHCPD_CONF"]
    text = open(conf).read()
    if MARK not in text:
        sys.exit(f"dhcpd-prefix6: no line marked '{MARK}' in {conf}")
    if event in ("acquired", "renewed"):
        dlen = int(os.environ.get("PD_DHCPD_DELEGATED_LEN", "60"))
        line = pool_line(os.environ["PD_PREFIX"], int(os.environ["PD_PREFIX_LEN"]), dlen)
    elif event in ("released", "expired", "declined", "replaced"):
        line = f"# prefix6 withdrawn ({event} {os.environ['PD_PREFIX']}/{os.environ['PD_PREFIX_LEN']}) {MARK}"
    else:
        return
    new = re.sub(rf"^.*{re.escape(MARK)}$", lambda _: line, text, flags=re.M)
    running = os.path.exists(os.environ.get("PD_DHCPD_PIDFILE", "/nonexistent"))
    if new == text and (running or os.environ.get("PD_DHCPD_RESTART")):
        return  # a renewal of the same prefix: nothing to do
    tmp = conf + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, conf)
    restart(conf)


if __name__ == "__main__":
    main()
