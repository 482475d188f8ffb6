#!/usr/bin/python3
"""pd-agent hook: serve an acquired prefix from ISC dhcpd -6.

When this host acquires a prefix (PD_KIND=acquired), rewrite the line
marked `# pd-agent:prefix6` in dhcpd.conf into

    prefix6 <first /N> <last /N> /N; # pd-agent:prefix6

so dhcpd delegates /N prefixes out of it, then restart dhcpd (it has no
reload). When the acquired prefix is released or expires, the line is
turned into a comment and dhcpd restarted, so nothing is delegated out of a
prefix this host no longer holds.

With PD_RESERVE_LAN=1 the first /N block, which holds this router's own
LAN /64 (see lan-radvd.sh, run before this hook), is kept out of the pool,
and the marked line, at the top level of dhcpd.conf, becomes the LAN's
whole subnet:

    subnet6 <LAN /64> { prefix6 <second /N> <last /N> /N; } # pd-agent:prefix6

(a /56 pooled as /60s offers 15). When the prefix goes, dhcpd is stopped:
it has nothing left to serve on that link.

Settings (environment, inherited from pd-agent):
  PD_DHCPD_CONF          dhcpd.conf holding the marker line (required)
  PD_DHCPD_DELEGATED_LEN length of the prefixes dhcpd hands out (default 60)
  PD_RESERVE_LAN         1: keep the first /N block for this router's LAN
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


def reserve_lan():
    return os.environ.get("PD_RESERVE_LAN", "0") in ("1", "on", "yes", "true")


def pool_line(prefix, plen, dlen, reserve):
    net = ipaddress.IPv6Network(f"{prefix}/{plen}")
    if dlen < plen or dlen > 128:
        sys.exit(f"dhcpd-prefix6: cannot delegate /{dlen} out of {net}")
    block = 1 << (128 - dlen)
    first = net.network_address
    last = ipaddress.IPv6Address(int(net.broadcast_address) & ~(block - 1))
    if not reserve:
        return f"prefix6 {first} {last} /{dlen}; {MARK}"
    if dlen == plen or plen > 64:
        sys.exit(f"dhcpd-prefix6: nothing left to delegate as /{dlen} out of {net} once its LAN /64 is kept")
    lan = ipaddress.IPv6Network(f"{first}/64")
    return f"subnet6 {lan} {{ prefix6 {first + block} {last} /{dlen}; }} {MARK}"


def stop(conf):
    """Stop the dhcpd whose pid is in PD_DHCPD_PIDFILE, waiting up to 2.5 s."""
    pidfile = os.environ.get("PD_DHCPD_PIDFILE")
    try:
        pid = int(open(pidfile).read().strip())
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.05)
    except (OSError, ValueError, TypeError):
        pass


def restart(conf):
    cmd = os.environ.get("PD_DHCPD_RESTART")
    if cmd:
        subprocess.run(cmd, shell=True, check=True)
        return
    pidfile = os.environ["PD_DHCPD_PIDFILE"]
    stop(conf)
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
        line = pool_line(os.environ["PD_PREFIX"], int(os.environ["PD_PREFIX_LEN"]), dlen, reserve_lan())
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
    if reserve_lan() and line.startswith("#"):
        stop(conf)  # no subnet left on the link: dhcpd would not start
    else:
        restart(conf)


if __name__ == "__main__":
    main()
