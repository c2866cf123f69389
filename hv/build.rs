//! Builds the guest image (guests/ workspace, target x86_64-unknown-none) and exports its path
//! as `HVLAB_GUEST_ELF`, so that `hv` embeds the exact guest its sources describe.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const GUEST_TARGET: &str = "x86_64-unknown-none";

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("hv/ lives in the repository root")
        .to_path_buf();
    let guests = root.join("guests");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = out.join("guest-target");

    for p in [
        "guests/Cargo.toml",
        "guests/.cargo/config.toml",
        "guests/rt",
        "guests/image",
        "guests/protocol/src",
        "workloads/src",
        "workloads/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }

    ensure_guest_target();

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guests)
        .args([
            "build",
            "--release",
            "--offline",
            "-p",
            "hvlab-guest",
            "--target",
            GUEST_TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // The host build's flags, wrappers (clippy, coverage) and target must not leak into the
    // guest build: it has its own flags in guests/.cargo/config.toml.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MAKEFLAGS",
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("failed to run cargo for the guest image");
    if !status.success() {
        panic!(
            "building the guest image failed (see above). If the error says the target \
             {GUEST_TARGET} is missing, run: rustup target add {GUEST_TARGET}"
        );
    }
    let rev = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(&root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=HVLAB_GIT_REV={rev}");
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let toolchain = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("cargo:rustc-env=HVLAB_RUSTC_VERSION={toolchain}");
    println!(
        "cargo:rerun-if-changed={}",
        root.join(".git/HEAD").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join(".git/refs/heads").display()
    );

    let elf = target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join("hvlab-guest");
    println!("cargo:rustc-env=HVLAB_GUEST_ELF={}", elf.display());
}

/// Installs the guest target through rustup when the toolchain lacks it (rustup does not do
/// this by itself where RUSTUP_AUTO_INSTALL=0), so a fresh clone builds with one command.
fn ensure_guest_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", GUEST_TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if libdir.as_ref().is_some_and(|d| d.exists()) {
        return;
    }
    println!("cargo:warning=installing the guest target: rustup target add {GUEST_TARGET}");
    let ok = Command::new("rustup")
        .args(["target", "add", GUEST_TARGET])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!(
            "cargo:warning=could not run `rustup target add {GUEST_TARGET}`; install the target by hand"
        );
    }
}
