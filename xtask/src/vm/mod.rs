//! `cargo xtask vm --kernel 6.1|6.12 [-- CMD…]`: runs CMD (default: `tcpq check`, then the
//! integration tests that prove each family) on Debian's own kernel in qemu, with this
//! machine's root filesystem shared read-only over 9p and a tmpfs overlay for writes, so the
//! binaries built here run there unchanged. Returns CMD's exit status.
//!
//! Facts of these machines (DESIGN.md, "Other kernels"): /dev/kvm is kvm-pvm, which boots only
//! PVM-built guests, so stock kernels run under TCG; the Debian kernels need virtio, 9p and
//! overlay as modules, loaded from a small busybox initramfs.
//!
//! This file: the command, its arguments and what it needs; the kernel is fetched in `fetch`,
//! the initramfs built in `initramfs`, the guest booted in `boot`, the default command written
//! in `script`, and `--matrix` runs them all in `matrix`.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{ensure_package, is_root, root_dir, run};

use boot::boot;
use fetch::fetch_kernel;
use initramfs::build_initramfs;
use matrix::matrix;
use script::default_script;

mod boot;
mod fetch;
mod initramfs;
mod matrix;
mod script;

/// The kernels of the matrix: what `--kernel` accepts, and the Debian 12 package names that
/// carry them (the newest one apt knows is taken).
const KERNELS: &[(&str, &str)] = &[
    ("6.1", r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$"),
    ("6.12", r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$"),
];

pub fn vm(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--matrix") {
        return matrix();
    }
    let (kernel, cmd) = parse_args(args)?;
    prepare()?;
    let guest = fetch_kernel(&kernel)?;
    let script = match cmd {
        Some(cmd) => cmd,
        None => default_script(true)?,
    };
    let initrd = build_initramfs(&guest, &script)?;
    let (status, _) = boot(&guest, &initrd)?;
    if status != 0 {
        bail!(
            "the command failed on {} with exit status {status}",
            guest.release
        );
    }
    eprintln!("xtask: vm: the command passed on {}", guest.release);
    Ok(())
}

/// Root, the Debian tools, and tcpq built (the guest runs this machine's build through 9p).
fn prepare() -> Result<()> {
    if !is_root() {
        bail!("xtask vm needs root (apt-get download, qemu's 9p export of /): run it as root");
    }
    for (tool, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("busybox", "busybox-static"),
        ("cpio", "cpio"),
        // depmod for the unpacked modules; modprobe in the guest (the host's root is its root).
        ("depmod", "kmod"),
    ] {
        ensure_package(tool, package, "xtask vm").map_err(anyhow::Error::msg)?;
    }
    // tcpq on the guest's PATH: this machine's build, seen through 9p.
    run(Command::new("cargo")
        .current_dir(root_dir())
        .args(["build", "--package", "tcpq-user"]))?;
    Ok(())
}

/// `--kernel K [-- CMD…]` → (K, CMD as one shell line).
fn parse_args(args: &[String]) -> Result<(String, Option<String>)> {
    let (opts, cmd) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], Some(args[i + 1..].join(" "))),
        None => (args, None),
    };
    let kernel = opts
        .windows(2)
        .find(|w| w[0] == "--kernel")
        .map(|w| w[1].clone())
        .context("usage: cargo xtask vm --kernel 6.1|6.12 [-- CMD…]")?;
    if !KERNELS.iter().any(|(k, _)| *k == kernel) {
        bail!("unknown kernel {kernel:?}: choose one of 6.1, 6.12");
    }
    Ok((kernel, cmd.filter(|c| !c.trim().is_empty())))
}

/// A Debian kernel package unpacked under target/vm/.
struct Guest {
    /// `uname -r` of the guest, e.g. 6.1.0-57-amd64.
    release: String,
    vmlinuz: PathBuf,
    /// lib/modules/RELEASE of the unpacked package (depmod run on it).
    modules: PathBuf,
    dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_args_takes_kernel_and_command() {
        let a = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            parse_args(&a("--kernel 6.1 -- tcpq check")).unwrap(),
            ("6.1".to_string(), Some("tcpq check".to_string()))
        );
        assert_eq!(
            parse_args(&a("--kernel 6.12")).unwrap(),
            ("6.12".to_string(), None)
        );
        assert!(parse_args(&a("--kernel 5.4")).is_err());
        assert!(parse_args(&a("-- tcpq check")).is_err());
    }
}
