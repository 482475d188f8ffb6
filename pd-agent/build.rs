//! Builds the kernel programs (`pd-ebpf`, nightly, bpfel-unknown-none) so
//! that `cargo build` alone yields an agent with its object embedded.
//! `PD_EBPF_OBJ=/path/to/object` skips the build and embeds that file.
use std::{env, path::PathBuf, process::Command};

fn main() {
    println!("cargo:rerun-if-env-changed=PD_EBPF_OBJ");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap();
    let ebpf = root.join("pd-ebpf");
    for p in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        ".cargo/config.toml",
        "rust-toolchain.toml",
    ] {
        println!("cargo:rerun-if-changed={}", ebpf.join(p).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("pd-common/src").display()
    );

    let obj = if let Ok(obj) = env::var("PD_EBPF_OBJ") {
        PathBuf::from(obj)
    } else {
        // Shared with `cargo xtask build-ebpf`, so the BPF build is done once.
        let target_dir = root.join("target/bpf");
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&ebpf)
            .args(["+nightly", "build", "--release", "--target-dir"])
            .arg(&target_dir);
        // The outer cargo's settings must not leak into the nightly BPF build.
        for (k, _) in env::vars() {
            if (k.starts_with("CARGO_") && k != "CARGO_HOME")
                || k.starts_with("RUSTC")
                || k == "RUSTUP_TOOLCHAIN"
                || k == "RUSTFLAGS"
            {
                cmd.env_remove(&k);
            }
        }
        let status = cmd
            .status()
            .expect("failed to run cargo +nightly for pd-ebpf");
        if !status.success() {
            panic!("building pd-ebpf failed; run `cargo xtask deps` (nightly rust-src, bpf-linker) and retry");
        }
        target_dir.join("bpfel-unknown-none/release/pd-ebpf")
    };
    println!("cargo:rustc-env=PD_EBPF_OBJ={}", obj.display());
}
