//! Operator-facing errors: each names what is wrong and exits non-zero.

use std::process::Command;

use pd_tests::{agent_bin, Netns, TempDir};

fn run_agent(ns: &Netns, pre: &[&str], args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", ns.name))
        .args(pre)
        .arg(agent_bin())
        .args(args);
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A namespace with only `lo`: asking for lan0 fails, naming lan0.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn missing_interface_is_named() {
    let ns = Netns::new("cli").unwrap();
    let dir = TempDir::new("cli").unwrap();
    let state = dir.path("state").display().to_string();
    let (code, err) = run_agent(
        &ns,
        &[],
        &["run", "--downstream", "lan0", "--state-dir", &state],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("interface lan0 does not exist"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A link type the programs cannot read (here loopback) is refused at
/// start, naming the interface and the type, before anything is attached.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn unsupported_link_type_is_refused() {
    let ns = Netns::new("cli").unwrap();
    let dir = TempDir::new("cli").unwrap();
    let state = dir.path("state").display().to_string();
    let pin = format!("/sys/fs/bpf/{}", pd_tests::unique("lt"));
    let (code, err) = run_agent(
        &ns,
        &[],
        &[
            "run",
            "--downstream",
            "lo",
            "--state-dir",
            &state,
            "--pin-dir",
            &pin,
        ],
    );
    let _ = std::fs::remove_dir_all(&pin);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("interface lo: link type loopback (772) is not supported"),
        "{err}"
    );
    let links = ns.exec(&["ip", "link", "show", "lo"]).unwrap();
    assert!(!links.contains("xdp"), "nothing attached: {links}");
}

/// Without privileges the agent says it needs root instead of failing obscurely.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn unprivileged_run_says_it_needs_root() {
    let ns = Netns::new("cli").unwrap();
    ns.exec(&[
        "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p",
    ])
    .unwrap();
    let dir = TempDir::new("cli").unwrap();
    let state = dir.path("state").display().to_string();
    let pin = format!("/sys/fs/bpf/{}", pd_tests::unique("nopriv"));
    let (code, err) = run_agent(
        &ns,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ],
        &[
            "run",
            "--downstream",
            "lan0",
            "--state-dir",
            &state,
            "--pin-dir",
            &pin,
        ],
    );
    let _ = std::fs::remove_dir_all(&pin);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("needs root"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `bindings` without a running agent reads the state directory and says so.
#[test]
fn bindings_without_agent_reads_state_dir() {
    let dir = TempDir::new("cli").unwrap();
    std::fs::create_dir_all(dir.path("state")).unwrap();
    std::fs::write(
        dir.path("state/bindings.json"),
        r#"{"version":1,"bindings":[{"prefix":"2001:db8:100::/56","kind":"delegated","iface":"lan0","ifindex":3,
        "next_hop":"fe80::1","client_duid":"000100aa","iaid":1,"t1":10,"t2":20,"preferred_lifetime":30,
        "valid_lifetime":60,"expires_at":4000000000,"updated_at":1}]}"#,
    )
    .unwrap();
    let out = Command::new(agent_bin())
        .args(["bindings", "--json", "--control"])
        .arg(dir.path("nope.sock"))
        .arg("--state-dir")
        .arg(dir.path("state"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("showing the state store"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["prefix"], "2001:db8:100::/56");
    assert_eq!(v[0]["client_duid"], "000100aa");
}

/// The shipped systemd unit is valid (`systemd-analyze verify`, with
/// ExecStart pointed at the binary under test).
#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/systemd/pd-agent.service"
    ))
    .unwrap();
    assert!(unit.contains("CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN"));
    let dir = TempDir::new("unit").unwrap();
    let path = dir.path("pd-agent.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/pd-agent",
            &agent_bin().display().to_string(),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}
