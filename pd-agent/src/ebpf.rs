//! Loading and attaching the kernel programs, and the handles to their maps.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, LpmTrie, MapData, MapInfo, PerCpuArray, RingBuf},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        xdp::XdpLink,
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    util::KernelVersion,
    Ebpf, EbpfError, EbpfLoader,
};
use pd_common::{
    global, maps, prog, ClientKey, ClientRecord, Counter, FwdStats, RouteValue, COUNTER_COUNT,
};

/// The compiled `pd-ebpf` object (built by `build.rs`).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("PD_EBPF_OBJ"));

/// Pinned links (one per program and interface) live here, under the pin dir.
pub const LINKS_DIR: &str = "links";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("pin directory {path}{}", perm_hint(.source))]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pin directory {0} is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs(PathBuf),
    #[error("loading the BPF object{}", chain_hint(.0))]
    Object(#[source] EbpfError),
    #[error("loading BPF program {program}: {reason}{hint}")]
    Program {
        program: &'static str,
        reason: String,
        hint: &'static str,
    },
    #[error("attaching {program} to {iface}")]
    Attach {
        program: &'static str,
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("BPF map {0} missing or of the wrong type: {1}")]
    Map(&'static str, String),
    #[error("reading the kernel's debug log ({})", pd_common::log::MAP)]
    KernelLog(#[source] aya_log::Error),
}

fn perm_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (pd-agent needs root: CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)"
        }
        _ => "",
    }
}

fn privilege_hint(e: &ProgramError) -> &'static str {
    text_hint(&e.to_string())
}

/// The privilege hint, if any error in `e`'s source chain says EPERM.
fn chain_hint(e: &dyn std::error::Error) -> &'static str {
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        if !text_hint(&err.to_string()).is_empty() {
            return text_hint(&err.to_string());
        }
        cur = err.source();
    }
    ""
}

fn text_hint(s: &str) -> &'static str {
    if s.contains("Operation not permitted") || s.contains("os error 1)") {
        eperm_hint(maps_charged_to_memlock(), memlock_finite(), may_load_bpf())
    } else {
        ""
    }
}

/// What to say of an EPERM from the bpf syscall. Before Linux 5.11 maps
/// and programs are charged to RLIMIT_MEMLOCK; after the first EPERM aya
/// tries to raise it to infinity, which fails without CAP_SYS_RESOURCE (a
/// systemd unit's bounding set, a container). For a process that may
/// load BPF at all, the kernel's EPERM then means "over the limit"; for
/// one that may not (no CAP_SYS_ADMIN or CAP_BPF), still "not root".
fn eperm_hint(charged_to_memlock: bool, memlock_finite: bool, may_load: bool) -> &'static str {
    if charged_to_memlock && memlock_finite && may_load {
        " (kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK, which is finite here \
         and cannot be raised without CAP_SYS_RESOURCE: set LimitMEMLOCK=infinity in \
         the unit, or run pd-agent after `ulimit -l unlimited`)"
    } else {
        " (loading BPF programs needs root: CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    }
}

/// Whether this process holds CAP_SYS_ADMIN (21) or CAP_BPF (39) in its
/// effective set (`CapEff` in /proc/self/status).
fn may_load_bpf() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| status_may_load_bpf(&s))
}

/// [`may_load_bpf`] of a /proc/PID/status text.
fn status_may_load_bpf(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 21 | 1 << 39) != 0)
}

/// Whether this kernel charges BPF memory to RLIMIT_MEMLOCK (before 5.11,
/// when memory cgroup accounting took over).
fn maps_charged_to_memlock() -> bool {
    KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(5, 11, 0))
}

/// Whether RLIMIT_MEMLOCK is below infinity for this process now.
fn memlock_finite() -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    r == 0 && lim.rlim_cur != libc::RLIM_INFINITY
}

/// First lines of a verifier log, for an error message an operator can read.
fn verifier_head(e: &ProgramError) -> String {
    let text = e.to_string();
    let mut lines: Vec<&str> = text.lines().collect();
    if lines.len() > 40 {
        // Keep the head and the tail: the tail says why it failed.
        let tail = lines.split_off(lines.len() - 15);
        lines.truncate(20);
        lines.push("...");
        lines.extend(tail);
    }
    lines.join("\n")
}

/// Make sure `dir` exists on a bpffs, mounting /sys/fs/bpf if nothing is
/// mounted there yet (as systemd does at boot on most distributions).
pub fn ensure_pin_dir(dir: &Path) -> Result<(), LoadError> {
    let bpffs = Path::new("/sys/fs/bpf");
    if dir.starts_with(bpffs) && !is_bpffs(bpffs) {
        let (src, target) = (c"bpf", c"/sys/fs/bpf");
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(LoadError::PinDir {
                path: bpffs.into(),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| LoadError::PinDir {
        path: dir.into(),
        source,
    })?;
    if !is_bpffs(dir) {
        return Err(LoadError::NotBpffs(dir.into()));
    }
    Ok(())
}

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

pub fn if_index(name: &str) -> Result<u32, LoadError> {
    let c = CString::new(name).map_err(|_| LoadError::NoInterface(name.into()))?;
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(LoadError::NoInterface(name.into())),
        i => Ok(i),
    }
}

/// Switches compiled into the programs at load time (read-only globals, so
/// the verifier prunes what is off).
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Forward delegated prefixes in XDP.
    pub fast_path: bool,
    /// Some interface validates source addresses.
    pub sav: bool,
    /// Some managed link carries bare IP packets (ppp, tun): the programs
    /// read each interface's link type from its flags.
    pub bare_links: bool,
    /// Ring buffer size in bytes (a power-of-2 multiple of the page size);
    /// None: the object's [`maps::EVENTS_BYTES`].
    pub ring_bytes: Option<u32>,
    /// Most entries of `pd_clients_v1`; None: the object's
    /// [`maps::CLIENTS_ENTRIES`].
    pub client_entries: Option<u32>,
    /// Entries of `pd_fwd_stats_v1` (bindings with forwarding counters);
    /// None: the object's [`maps::FWD_STATS_ENTRIES`].
    pub fwd_counters: Option<u32>,
    /// Log from the kernel why packets were passed on (aya-log). Off, the
    /// log calls are pruned at load and aya-log's ring buffer is one page.
    pub kernel_log: bool,
    /// pd-agent relays: the relay's rate limits and MAC records are
    /// loaded (off, the verifier prunes them).
    pub relay: bool,
    /// Load the compat programs ([`Fallbacks`]) even where the kernel has
    /// what the others need (tests; `PD_AGENT_COMPAT=1` does the same).
    pub force_compat: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            fast_path: true,
            sav: true,
            bare_links: true,
            ring_bytes: None,
            client_entries: None,
            fwd_counters: None,
            kernel_log: false,
            relay: true,
            force_compat: false,
        }
    }
}

/// How a program came to be attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// A new link, pinned.
    New(Option<XdpMode>),
    /// An earlier agent's pinned link, its program swapped atomically.
    Reused,
    /// A new link that cannot be pinned (XDP on a kernel before 5.9).
    Unpinned(Option<XdpMode>),
    /// A clsact filter at a fixed priority (no tcx: kernels before 6.6).
    Netlink,
    /// That filter, left by an earlier agent, its program replaced.
    Replaced,
}

/// What the kernel lacks that the programs would use, and so which
/// fallbacks the agent chose: the helpers probed at load by loading two
/// small programs that call them, tcx by the kernel's version
/// ([`tcx_available`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fallbacks {
    /// No `bpf_loop` (before 5.17): the TLV walk is a bounded loop over a
    /// global function (`pd_tlv_step`).
    pub no_bpf_loop: bool,
    /// No `bpf_xdp_load_bytes` (before 5.18): XDP copies the payload with
    /// `bpf_probe_read_kernel` from its (linear) frame.
    pub no_xdp_load_bytes: bool,
    /// No tcx (before 6.6): TC egress is a clsact filter.
    pub no_tcx: bool,
}

impl Fallbacks {
    /// Whether the compat programs are loaded (either helper missing).
    pub fn compat(&self) -> bool {
        self.no_bpf_loop || self.no_xdp_load_bytes
    }

    /// The fallbacks in words, for the start-up log and `stats`; empty
    /// when there are none.
    pub fn describe(&self) -> Vec<&'static str> {
        [
            (self.no_bpf_loop, "no bpf_loop (Linux 5.17): DHCPv6 options walked by a bounded loop over a global function"),
            (self.no_xdp_load_bytes, "no bpf_xdp_load_bytes (Linux 5.18): XDP copies the payload with bpf_probe_read_kernel"),
            (self.no_tcx, "no tcx (Linux 6.6): TC egress attaches as a clsact filter at a fixed priority"),
        ]
        .into_iter()
        .filter_map(|(on, what)| on.then_some(what))
        .collect()
    }
}

/// The loaded object: both programs verified, maps created (the agent's
/// maps pinned under the pin directory).
pub struct Programs {
    ebpf: Ebpf,
    /// The kernel features missing, and so the programs loaded.
    pub fallbacks: Fallbacks,
    client_records: u32,
    /// What loading changed that an operator should hear about (pinned
    /// maps of another layout replaced).
    pub notes: Vec<String>,
}

/// The pinned maps and the layout this build expects of each:
/// (name, key size, value size, max entries, flags).
fn pinned_layouts(opts: &LoadOptions) -> [(&'static str, u32, u32, u32, u32); 9] {
    use std::mem::size_of;
    const NO_PREALLOC: u32 = 1;
    [
        (
            maps::EVENTS,
            0,
            0,
            opts.ring_bytes.unwrap_or(maps::EVENTS_BYTES),
            0,
        ),
        (maps::COUNTERS, 4, 8, COUNTER_COUNT, 0),
        (maps::SEQ, 4, 8, 1, 0),
        (
            maps::CLIENTS,
            size_of::<ClientKey>() as u32,
            size_of::<ClientRecord>() as u32,
            opts.client_entries.unwrap_or(maps::CLIENTS_ENTRIES),
            NO_PREALLOC,
        ),
        (
            maps::ROUTES,
            20,
            size_of::<RouteValue>() as u32,
            maps::ROUTES_ENTRIES,
            NO_PREALLOC,
        ),
        (
            maps::FWD_STATS,
            4,
            size_of::<FwdStats>() as u32,
            opts.fwd_counters.unwrap_or(maps::FWD_STATS_ENTRIES),
            0,
        ),
        (maps::IFACES, 4, 4, maps::IFACES_ENTRIES, 0),
        (maps::ONLINK, 20, 4, maps::ONLINK_ENTRIES, NO_PREALLOC),
        (maps::FWD_LEASE, 4, 8, 1, 0),
    ]
}

/// Priority and handle of the egress filter where tcx is missing (kernels
/// before 6.6): fixed, so that the next agent replaces it in place.
const TC_PRIORITY: u16 = 0x7d0;
const TC_HANDLE: TcHandle = TcHandle::new(0, 0x7d0);

/// tcx links (pinnable) exist from Linux 6.6; `PD_AGENT_TC_NETLINK=1`
/// forces the older netlink path (tests).
fn tcx_available() -> bool {
    if std::env::var_os("PD_AGENT_TC_NETLINK").is_some_and(|v| v == "1") {
        return false;
    }
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

impl Programs {
    /// Load both programs into the kernel without attaching them, with the
    /// fast path and source-address validation on.
    pub fn load(pin_dir: &Path) -> Result<Self, LoadError> {
        Self::load_with(pin_dir, LoadOptions::default())
    }

    pub fn load_with(pin_dir: &Path, opts: LoadOptions) -> Result<Self, LoadError> {
        ensure_pin_dir(pin_dir)?;
        let fast_path = opts.fast_path as u8;
        let sav = opts.sav as u8;
        let bare_links = opts.bare_links as u8;
        let relay = opts.relay as u8;
        let log_level = if opts.kernel_log {
            pd_common::log::DEBUG
        } else {
            0
        };
        let mut loader = EbpfLoader::new();
        loader
            // The programs carry no CO-RE relocations: the kernel's own
            // BTF (parsed, it peaks at ~10 MiB of heap) is not needed.
            .btf(None)
            .default_map_pin_directory(pin_dir)
            .override_global(global::FAST_PATH, &fast_path, true)
            .override_global(global::SAV, &sav, true)
            .override_global(global::BARE_LINKS, &bare_links, true)
            .override_global(global::RELAY, &relay, true)
            .override_global(global::LOG_LEVEL, &log_level, true);
        if !opts.kernel_log {
            loader.map_max_entries(pd_common::log::MAP, page_size());
        }
        if !opts.relay {
            // LRU maps are preallocated (about 1.3 MiB each at full size):
            // an agent that does not relay keeps them token-sized.
            loader.map_max_entries(maps::RELAY_BUCKETS, RELAY_MAPS_UNUSED);
            loader.map_max_entries(maps::RELAY_MACS, RELAY_MAPS_UNUSED);
        }
        loader.map_max_entries(maps::EVENTS, opts.ring_bytes.unwrap_or(maps::EVENTS_BYTES));
        loader.map_max_entries(
            maps::CLIENTS,
            opts.client_entries.unwrap_or(maps::CLIENTS_ENTRIES),
        );
        loader.map_max_entries(
            maps::FWD_STATS,
            opts.fwd_counters.unwrap_or(maps::FWD_STATS_ENTRIES),
        );
        // A pinned map is reused as it is (aya checks nothing): one of
        // another layout or size, left by another version or setting, is
        // replaced, and what it held is lost.
        let mut notes = Vec::new();
        for (name, key, value, max, flags) in pinned_layouts(&opts) {
            let path = pin_dir.join(name);
            if let Ok(i) = MapInfo::from_pin(&path) {
                let have = (i.key_size(), i.value_size(), i.max_entries(), i.map_flags());
                if have != (key, value, max, flags) {
                    let _ = std::fs::remove_file(&path);
                    notes.push(format!(
                        "pinned map {} had key/value/entries/flags {}/{}/{}/{:#x}, this build wants {key}/{value}/{max}/{flags:#x}: replaced",
                        path.display(),
                        have.0,
                        have.1,
                        have.2,
                        have.3
                    ));
                }
            }
        }
        let mut progs = Programs {
            ebpf: loader.load(OBJECT).map_err(LoadError::Object)?,
            fallbacks: Fallbacks::default(),
            client_records: opts.client_entries.unwrap_or(maps::CLIENTS_ENTRIES),
            notes,
        };
        // `PD_AGENT_COMPAT=1` takes the fallbacks on any kernel (tests).
        let forced =
            opts.force_compat || std::env::var_os("PD_AGENT_COMPAT").is_some_and(|v| v == "1");
        progs.fallbacks = Fallbacks {
            no_bpf_loop: forced || !progs.probe(prog::PROBE_LOOP),
            no_xdp_load_bytes: forced || !progs.probe(prog::PROBE_XDP_LOAD_BYTES),
            no_tcx: !tcx_available(),
        };
        let failed = |program| {
            move |e: ProgramError| LoadError::Program {
                program,
                hint: privilege_hint(&e),
                reason: verifier_head(&e),
            }
        };
        let (x, t) = (progs.xdp_name(), progs.tc_name());
        progs.xdp()?.load().map_err(failed(x))?;
        progs.tc()?.load().map_err(failed(t))?;
        Ok(progs)
    }

    /// Whether a probe program loads (the helper it calls exists); it is
    /// unloaded again.
    fn probe(&mut self, name: &'static str) -> bool {
        let Some(p) = self.ebpf.program_mut(name) else {
            return false;
        };
        let Ok(p): Result<&mut Xdp, _> = p.try_into() else {
            return false;
        };
        let ok = p.load().is_ok();
        let _ = p.unload();
        ok
    }

    /// The XDP program loaded: `pd_xdp`, or `pd_xdp_compat` ([`Fallbacks`]).
    pub fn xdp_name(&self) -> &'static str {
        if self.fallbacks.compat() {
            prog::XDP_COMPAT
        } else {
            prog::XDP
        }
    }

    /// The TC program loaded: `pd_tc_egress`, or `pd_tc_egress_compat`.
    pub fn tc_name(&self) -> &'static str {
        if self.fallbacks.compat() {
            prog::TC_EGRESS_COMPAT
        } else {
            prog::TC_EGRESS
        }
    }

    pub fn xdp(&mut self) -> Result<&mut Xdp, LoadError> {
        let name = self.xdp_name();
        self.ebpf
            .program_mut(name)
            .ok_or(LoadError::Map(name, "not in object".into()))?
            .try_into()
            .map_err(|e: ProgramError| LoadError::Map(name, e.to_string()))
    }

    /// The empty XDP program (benchmark baseline), loaded on first use.
    pub fn baseline(&mut self) -> Result<&mut Xdp, LoadError> {
        self.extra(prog::XDP_PASS)
    }

    /// The XDP_TX program (benchmark traffic generator), loaded on first use.
    pub fn generator(&mut self) -> Result<&mut Xdp, LoadError> {
        self.extra(prog::XDP_TX)
    }

    fn extra(&mut self, name: &'static str) -> Result<&mut Xdp, LoadError> {
        let p: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(LoadError::Map(name, "not in object".into()))?
            .try_into()
            .map_err(|e: ProgramError| LoadError::Map(name, e.to_string()))?;
        if p.fd().is_err() {
            p.load().map_err(|e| LoadError::Program {
                program: name,
                hint: "",
                reason: e.to_string(),
            })?;
        }
        Ok(p)
    }

    pub fn tc(&mut self) -> Result<&mut SchedClassifier, LoadError> {
        let name = self.tc_name();
        self.ebpf
            .program_mut(name)
            .ok_or(LoadError::Map(name, "not in object".into()))?
            .try_into()
            .map_err(|e: ProgramError| LoadError::Map(name, e.to_string()))
    }

    /// Attach the XDP program without pinning the link (tests, benchmarks):
    /// driver mode, falling back to generic (skb) mode.
    pub fn attach_xdp(&mut self, iface: &str) -> Result<XdpMode, LoadError> {
        if_index(iface)?;
        let program = self.xdp_name();
        let xdp = self.xdp()?;
        match xdp.attach(iface, XdpMode::Driver) {
            Ok(_) => Ok(XdpMode::Driver),
            Err(_) => xdp
                .attach(iface, XdpMode::Skb)
                .map(|_| XdpMode::Skb)
                .map_err(|source| LoadError::Attach {
                    program,
                    iface: iface.into(),
                    source,
                }),
        }
    }

    /// Attach `pd_xdp` to `iface` through a link pinned at
    /// `links/xdp_<iface>_<ifindex>`. An earlier agent's link there gets
    /// the new program atomically, so snooping and forwarding never stop;
    /// the link outlives this agent, which is what lets the next one
    /// find every message seen meanwhile in the ring buffer.
    pub fn attach_xdp_pinned(&mut self, iface: &str, links: &Path) -> Result<Attached, LoadError> {
        let path = link_path(links, "xdp", iface)?;
        if let Some(fd) = open_link(&path) {
            if let Ok(link) = XdpLink::try_from(fd) {
                if self.xdp()?.attach_to_link(link).is_ok() {
                    return Ok(Attached::Reused);
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        let mut mode = XdpMode::Driver;
        let program = self.xdp_name();
        let xdp = self.xdp()?;
        let id = match xdp.attach(iface, mode) {
            Ok(id) => id,
            Err(_) => {
                mode = XdpMode::Skb;
                xdp.attach(iface, mode)
                    .map_err(|source| LoadError::Attach {
                        program,
                        iface: iface.into(),
                        source,
                    })?
            }
        };
        let link = xdp.take_link(id).map_err(|source| LoadError::Attach {
            program,
            iface: iface.into(),
            source,
        })?;
        match FdLink::try_from(link) {
            Ok(fd) => pin_link(fd, &path).map(|()| Attached::New(Some(mode))),
            Err(_) => Ok(Attached::Unpinned(Some(mode))),
        }
    }

    /// [`Programs::attach_xdp_pinned`] for `pd_tc_egress` (tcx links; on
    /// kernels without tcx the clsact filter is not pinned).
    pub fn attach_tc_pinned(&mut self, iface: &str, links: &Path) -> Result<Attached, LoadError> {
        if self.fallbacks.no_tcx {
            return self.attach_tc_netlink(iface, links);
        }
        let path = link_path(links, "tc", iface)?;
        if let Some(fd) = open_link(&path) {
            if let Ok(link) = SchedClassifierLink::try_from(fd) {
                if self.tc()?.attach_to_link(link).is_ok() {
                    return Ok(Attached::Reused);
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        let _ = tc::qdisc_add_clsact(iface);
        let program = self.tc_name();
        let tc = self.tc()?;
        let id = tc
            .attach(iface, TcAttachType::Egress)
            .map_err(|source| LoadError::Attach {
                program,
                iface: iface.into(),
                source,
            })?;
        let link = tc.take_link(id).map_err(|source| LoadError::Attach {
            program,
            iface: iface.into(),
            source,
        })?;
        match FdLink::try_from(link) {
            Ok(fd) => pin_link(fd, &path).map(|()| Attached::New(None)),
            Err(_) => Ok(Attached::Unpinned(None)),
        }
    }
    /// Without tcx: a clsact filter at a fixed priority and handle. It
    /// outlives the agent like a pinned link (netlink filters are not tied
    /// to a file descriptor), and the next agent replaces its program in
    /// place instead of adding a second filter.
    fn attach_tc_netlink(&mut self, iface: &str, links: &Path) -> Result<Attached, LoadError> {
        let program = self.tc_name();
        let err = |source| LoadError::Attach {
            program,
            iface: iface.into(),
            source,
        };
        // A marker (an empty directory: bpffs holds no plain files), so
        // that a later agent no longer managing this interface, or using
        // tcx, knows to remove the filter.
        let marker = links.join(format!("tcnl_{}", pin_escape(iface)));
        std::fs::create_dir_all(&marker).map_err(|source| LoadError::PinDir {
            path: marker.clone(),
            source,
        })?;
        let _ = tc::qdisc_add_clsact(iface);
        if let Ok(old) =
            SchedClassifierLink::attached(iface, TcAttachType::Egress, TC_PRIORITY, TC_HANDLE, None)
        {
            if let Ok(id) = self.tc()?.attach_to_link(old) {
                std::mem::forget(self.tc()?.take_link(id).map_err(err)?);
                return Ok(Attached::Replaced);
            }
        }
        let opts = NlOptions {
            priority: TC_PRIORITY,
            handle: TC_HANDLE,
            ..Default::default()
        };
        let tc = self.tc()?;
        let id = tc
            .attach_with_options(iface, TcAttachType::Egress, TcAttachOptions::Netlink(opts))
            .map_err(err)?;
        // Dropping the link would detach the filter; it stays on purpose.
        std::mem::forget(tc.take_link(id).map_err(err)?);
        Ok(Attached::Netlink)
    }

    pub fn take_seq(&mut self) -> Result<PerCpuArray<MapData, u64>, LoadError> {
        self.take(maps::SEQ)
    }

    /// Entries of `pd_clients_v1`.
    pub fn client_records(&self) -> u32 {
        self.client_records
    }

    /// Verified instruction counts of (XDP, TC).
    pub fn verified_instructions(&mut self) -> (Option<u32>, Option<u32>) {
        let x = self
            .xdp()
            .ok()
            .and_then(|p| p.info().ok())
            .and_then(|i| i.verified_instruction_count());
        let t = self
            .tc()
            .ok()
            .and_then(|p| p.info().ok())
            .and_then(|i| i.verified_instruction_count());
        (x, t)
    }

    /// Take a map out of the object as its typed handle.
    fn take<T>(&mut self, name: &'static str) -> Result<T, LoadError>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let m = self
            .ebpf
            .take_map(name)
            .ok_or(LoadError::Map(name, "not in object".into()))?;
        T::try_from(m).map_err(|e| LoadError::Map(name, e.to_string()))
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        self.take(maps::EVENTS)
    }

    pub fn take_routes(&mut self) -> Result<LpmTrie<MapData, [u8; 16], RouteValue>, LoadError> {
        self.take(maps::ROUTES)
    }

    pub fn take_fwd_stats(&mut self) -> Result<PerCpuArray<MapData, FwdStats>, LoadError> {
        self.take(maps::FWD_STATS)
    }

    pub fn take_ifaces(&mut self) -> Result<HashMap<MapData, u32, u32>, LoadError> {
        self.take(maps::IFACES)
    }

    pub fn take_onlink(&mut self) -> Result<LpmTrie<MapData, [u8; 16], u32>, LoadError> {
        self.take(maps::ONLINK)
    }

    pub fn take_clients(&mut self) -> Result<HashMap<MapData, ClientKey, ClientRecord>, LoadError> {
        self.take(maps::CLIENTS)
    }

    pub fn take_lease(&mut self) -> Result<aya::maps::Array<MapData, u64>, LoadError> {
        self.take(maps::FWD_LEASE)
    }

    pub fn take_counters(&mut self) -> Result<Counters, LoadError> {
        self.take(maps::COUNTERS).map(Counters)
    }

    /// The reader of the kernel's debug log (loaded with `kernel_log`),
    /// writing to `logger`.
    pub fn take_kernel_log<T: log::Log>(
        &mut self,
        logger: T,
    ) -> Result<aya_log::EbpfLogger<T>, LoadError> {
        aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, logger).map_err(LoadError::KernelLog)
    }

    /// Write the relay's rate limits (`pd_relay_limits_v1`).
    pub fn set_relay_limits(&mut self, limits: pd_common::RelayLimits) -> Result<(), LoadError> {
        let m = self
            .ebpf
            .map_mut(maps::RELAY_LIMITS)
            .ok_or(LoadError::Map(maps::RELAY_LIMITS, "not in object".into()))?;
        let mut a: aya::maps::Array<&mut MapData, pd_common::RelayLimits> =
            aya::maps::Array::try_from(m)
                .map_err(|e| LoadError::Map(maps::RELAY_LIMITS, e.to_string()))?;
        a.set(0, limits, 0)
            .map_err(|e| LoadError::Map(maps::RELAY_LIMITS, e.to_string()))
    }

    /// The clients' MACs the XDP program records for the relay
    /// (`pd_relay_macs_v1`).
    pub fn take_relay_macs(&mut self) -> Result<RelayMacs, LoadError> {
        let m = self
            .ebpf
            .take_map(maps::RELAY_MACS)
            .ok_or(LoadError::Map(maps::RELAY_MACS, "not in object".into()))?;
        HashMap::try_from(m).map_err(|e| LoadError::Map(maps::RELAY_MACS, e.to_string()))
    }
}

/// Entries of the relay's LRU maps when the agent does not relay.
const RELAY_MAPS_UNUSED: u32 = 16;

/// `pd_relay_macs_v1`: (ifindex, client address) -> MAC and 2 zero bytes.
pub type RelayMacs = HashMap<MapData, pd_common::MacKey, [u8; 8]>;

/// The system's page size (the smallest ring buffer).
pub fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u32,
        _ => 4096,
    }
}

/// An interface name as a bpffs name: bpffs refuses dots (it keeps them
/// for its own files), and Linux allows them (`eth0.10`). `.` becomes
/// `%2e` and `%` becomes `%25`, so distinct names stay distinct and the
/// name can be read back ([`pin_unescape`]).
pub fn pin_escape(iface: &str) -> String {
    let mut out = String::with_capacity(iface.len());
    for c in iface.chars() {
        match c {
            '%' => out.push_str("%25"),
            '.' => out.push_str("%2e"),
            c => out.push(c),
        }
    }
    out
}

pub fn pin_unescape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("%2e") {
            out.push('.');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("%25") {
            out.push('%');
            rest = t;
        } else {
            out.push('%');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// `links/<prog>_<iface>_<ifindex>` (the name escaped, [`pin_escape`]).
/// Pins of the same program and interface name with another index belong
/// to an interface that was deleted and recreated: their links are dead,
/// so they are removed.
fn link_path(links: &Path, prog: &str, iface: &str) -> Result<PathBuf, LoadError> {
    let ifindex = if_index(iface)?;
    std::fs::create_dir_all(links).map_err(|source| LoadError::PinDir {
        path: links.into(),
        source,
    })?;
    let stem = format!("{prog}_{}_", pin_escape(iface));
    let want = format!("{stem}{ifindex}");
    if let Ok(dir) = std::fs::read_dir(links) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&stem) && name != want && name[stem.len()..].parse::<u32>().is_ok()
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(links.join(want))
}

fn open_link(path: &Path) -> Option<FdLink> {
    if !path.exists() {
        return None;
    }
    match PinnedLink::from_pin(path) {
        Ok(p) => Some(p.into()),
        Err(_) => {
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

fn pin_link(fd: FdLink, path: &Path) -> Result<(), LoadError> {
    fd.pin(path).map(drop).map_err(|e| LoadError::PinDir {
        path: path.into(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Remove pinned links that do not belong to one of `keep` (iface names):
/// interfaces no longer configured. Unpinning a link nobody holds detaches it.
pub fn prune_links(links: &Path, keep: &[String]) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(dir) = std::fs::read_dir(links) else {
        return removed;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(iface) = name.strip_prefix("tcnl_") {
            // A clsact filter of an earlier agent without tcx: it outlives
            // agents, so it is removed explicitly when no longer wanted.
            let iface = pin_unescape(iface);
            if !keep.contains(&iface) || tcx_available() {
                detach_tc_netlink(&iface);
                let _ = std::fs::remove_dir(e.path());
                removed.push(name);
            }
            continue;
        }
        let Some(rest) = name
            .strip_prefix("xdp_")
            .or_else(|| name.strip_prefix("tc_"))
        else {
            continue;
        };
        let Some((iface, idx)) = rest.rsplit_once('_') else {
            continue;
        };
        let iface = pin_unescape(iface);
        let live = keep.contains(&iface) && if_index(&iface).is_ok_and(|i| i.to_string() == idx);
        if !live {
            let _ = std::fs::remove_file(e.path());
            removed.push(name);
        }
    }
    removed
}

/// Unpin every link (`--flush-on-exit`): the programs go with the agent.
fn detach_tc_netlink(iface: &str) {
    if let Ok(l) =
        SchedClassifierLink::attached(iface, TcAttachType::Egress, TC_PRIORITY, TC_HANDLE, None)
    {
        let _ = aya::programs::Link::detach(l);
    }
}

pub fn unpin_links(links: &Path, ifaces: &[String]) {
    let _ = std::fs::remove_dir_all(links);
    if !tcx_available() {
        for iface in ifaces {
            detach_tc_netlink(iface);
        }
    }
}

/// The per-CPU outcome counters, summed over CPUs on read.
pub struct Counters(PerCpuArray<MapData, u64>);

impl Counters {
    pub fn read(&self) -> Vec<(&'static str, u64)> {
        (0..COUNTER_COUNT)
            .map(|i| {
                let v = self.0.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
                (Counter::ALL[i as usize].name(), v)
            })
            .collect()
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.0
            .get(&(c as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// EPERM names the memlock limit only where it can be the cause: an
    /// old kernel, a finite limit, and a process that may load BPF.
    #[test]
    fn eperm_hint_names_memlock_only_before_5_11_with_a_finite_limit() {
        let memlock = eperm_hint(true, true, true);
        assert!(memlock.contains("RLIMIT_MEMLOCK"), "{memlock}");
        assert!(memlock.contains("LimitMEMLOCK=infinity"), "{memlock}");
        for charged in [false, true] {
            for finite in [false, true] {
                for may_load in [false, true] {
                    if charged && finite && may_load {
                        continue;
                    }
                    let root = eperm_hint(charged, finite, may_load);
                    assert!(
                        root.contains("needs root"),
                        "{charged} {finite} {may_load}: {root}"
                    );
                }
            }
        }
        assert_eq!(text_hint("map created"), "");
        for (caps, may) in [
            ("000001ffffffffff", true),  // root
            ("0000000000200000", true),  // CAP_SYS_ADMIN alone
            ("0000008000000000", true),  // CAP_BPF alone
            ("0000000000001000", false), // CAP_NET_ADMIN alone
            ("0000000000000000", false), // a user
        ] {
            let status = format!(
                "Name:	pd-agent
CapInh:	0
CapEff:	{caps}
"
            );
            assert_eq!(status_may_load_bpf(&status), may, "{caps}");
        }
        assert!(!status_may_load_bpf(
            "Name:	pd-agent
"
        ));
    }

    /// The kernel side spells map names in `#[map(name = "...")]`, which
    /// takes only a string literal (aya-ebpf 0.2.1's macro parses a
    /// `LitStr`, and Rust's `export_name` needs a literal too): this ties
    /// the built object to `pd-common`'s names, sizes and globals.
    #[test]
    fn object_matches_pd_common() {
        let obj = aya_obj::Object::parse(OBJECT).expect("parsing the kernel object");
        for p in [
            prog::XDP,
            prog::TC_EGRESS,
            prog::XDP_COMPAT,
            prog::TC_EGRESS_COMPAT,
            prog::PROBE_LOOP,
            prog::PROBE_XDP_LOAD_BYTES,
            prog::XDP_PASS,
            prog::XDP_TX,
        ] {
            assert!(
                obj.programs.contains_key(p),
                "program {p} not in the object"
            );
        }
        let mut names: Vec<&str> = obj.maps.keys().map(String::as_str).collect();
        names.retain(|n| !n.starts_with('.'));
        names.sort_unstable();
        let mut want: Vec<&str> = maps::PINNED.to_vec();
        want.extend([
            maps::SCRATCH,
            maps::RELAY_LIMITS,
            maps::RELAY_BUCKETS,
            maps::RELAY_MACS,
        ]);
        want.push(pd_common::log::MAP);
        want.sort_unstable();
        assert_eq!(names, want, "the object's maps");
        for (name, key, value, max, flags) in pinned_layouts(&LoadOptions::default()) {
            let m = &obj.maps[name];
            assert_eq!(
                (m.key_size(), m.value_size(), m.max_entries(), m.map_flags()),
                (key, value, max, flags),
                "{name}: key/value/entries/flags"
            );
        }
        // The load-time switches, by their symbol names (NUL-terminated in
        // the string table); the loader also insists they exist.
        for g in [
            global::FAST_PATH,
            global::SAV,
            global::BARE_LINKS,
            global::LOG_LEVEL,
            global::RELAY,
        ] {
            let sym = [g.as_bytes(), b"\0"].concat();
            assert!(
                OBJECT.windows(sym.len()).any(|w| w == sym),
                "global {g} not in the object"
            );
        }
    }

    #[test]
    fn pin_names_hold_no_dots_and_read_back() {
        for name in [
            "eth0.10",
            "lan.5",
            "br-lan",
            "a%2eb",
            "wg_0",
            "x.%.y",
            "123456789012345",
        ] {
            let e = pin_escape(name);
            assert!(!e.contains('.'), "{e}");
            assert_eq!(pin_unescape(&e), name);
        }
        // Names that differ stay different.
        assert_ne!(pin_escape("a.b"), pin_escape("a%2eb"));
    }
}
