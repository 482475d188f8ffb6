#!/bin/sh
# pd-agent hook: keep delegated prefixes in an nftables set, e.g. to allow
# forwarding only to prefixes that are currently delegated:
#
#   nft add table inet pd
#   nft add set inet pd delegated '{ type ipv6_addr; flags interval; }'
#
# Settings (environment): PD_NFT_FAMILY (default inet), PD_NFT_TABLE
# (default pd), PD_NFT_SET (default delegated).
set -eu
[ "${PD_KIND:-}" = delegated ] || exit 0
family=${PD_NFT_FAMILY:-inet}
table=${PD_NFT_TABLE:-pd}
set=${PD_NFT_SET:-delegated}
element="$PD_PREFIX/$PD_PREFIX_LEN"
case "$PD_EVENT" in
  delegated|renewed)
    nft add element "$family" "$table" "$set" "{ $element }" ;;
  released|expired|declined|replaced)
    # Already gone is fine.
    nft delete element "$family" "$table" "$set" "{ $element }" 2>/dev/null || true ;;
esac
