//! A Debian kernel package: the newest apt knows for a kernel of the matrix, downloaded and
//! unpacked under target/vm/ (`Guest`).
use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};

use super::{Guest, KERNELS};
use crate::{output_of, root_dir, run};

pub(super) fn fetch_kernel(kernel: &str) -> Result<Guest> {
    let pattern = KERNELS
        .iter()
        .find(|(k, _)| *k == kernel)
        .map(|(_, p)| *p)
        .context("unknown kernel")?;
    let search = || {
        output_of(Command::new("apt-cache").args(["search", "--names-only", pattern]))
            .unwrap_or_default()
    };
    let mut found = search();
    if found.trim().is_empty() {
        run(Command::new("apt-get").arg("update").stdout(Stdio::null()))?;
        found = search();
    }
    let package = newest_package(&found)
        .with_context(|| format!("apt knows no package matching {pattern}"))?;
    let dir = root_dir().join("target/vm").join(&package);
    let unpacked = dir.join("root");
    if !unpacked.join("boot").exists() {
        std::fs::create_dir_all(&dir)?;
        eprintln!("xtask: vm: fetching {package}…");
        run(Command::new("apt-get")
            .current_dir(&dir)
            .args(["download", "-q", &package]))?;
        let deb = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        let _ = std::fs::remove_file(&deb);
    }
    let vmlinuz = std::fs::read_dir(unpacked.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("the kernel package has no boot/vmlinuz-*")?;
    let release = vmlinuz
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_start_matches("vmlinuz-")
                .to_string()
        })
        .unwrap_or_default();
    let modules_base = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|b| unpacked.join(b))
        .find(|b| b.join(&release).exists())
        .context("the kernel package has no lib/modules/RELEASE")?;
    let modules = modules_base.join(&release);
    if !modules.join("modules.dep").exists() {
        // Debian's postinst runs depmod; an unpacked package has no modules.dep yet.
        let base = modules_base
            .parent()
            .and_then(Path::parent)
            .context("modules base")?;
        run(Command::new("depmod").arg("-b").arg(base).arg(&release))?;
    }
    Ok(Guest {
        release,
        vmlinuz,
        modules,
        dir,
    })
}

/// The highest version among `apt-cache search` lines ("name - description").
fn newest_package(search: &str) -> Option<String> {
    search
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .max_by(|a, b| version_key(a).cmp(&version_key(b)))
}

/// Numbers in a package name, for ordering 6.1.0-9 before 6.1.0-57.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_package_orders_by_number() {
        let s = "linux-image-6.1.0-9-amd64-unsigned - Linux 6.1\nlinux-image-6.1.0-57-amd64-unsigned - Linux 6.1\nlinux-image-6.1.0-47-amd64-unsigned - x\n";
        assert_eq!(
            newest_package(s).as_deref(),
            Some("linux-image-6.1.0-57-amd64-unsigned")
        );
        assert_eq!(newest_package(""), None);
    }
}
