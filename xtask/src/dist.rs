//! `cargo xtask dist`: the release binary (its eBPF object embedded by tcpq-user/build.rs), man
//! pages and shell completions (tcpq-assets: clap_mangen and clap_complete over the CLI), and a
//! Debian package built with dpkg-deb: /usr/bin/tcpq, the man pages, bash/zsh/fish completions,
//! the tcpq-export systemd unit (deploy/systemd, not enabled on install) and its
//! /etc/default/tcpq-export (a conffile); and an OCI image archive of the stripped binary
//! (`image.rs`: tcpq-VERSION-oci.tar, `localhost/tcpq:VERSION`). Output in target/dist/.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{output_of, root_dir, run};

/// The Debian package's name.
pub const PACKAGE: &str = "tcpq";

pub fn dist() -> Result<PathBuf> {
    let root = root_dir();
    run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "tcpq-user",
        "--bins",
    ]))?;
    let release = root.join("target/release");
    let out = root.join("target/dist");
    let _ = std::fs::remove_dir_all(&out);
    let assets = out.join("assets");
    run(Command::new(release.join("tcpq-assets")).arg(&assets))?;

    let version = package_version(&root)?;
    let arch = output_of(Command::new("dpkg").arg("--print-architecture"))
        .map(|s| s.trim().to_string())
        .context("dpkg --print-architecture (dist builds a Debian package)")?;
    let tree = out.join(format!("{PACKAGE}_{version}_{arch}"));
    let put = |from: &Path, to: &str, mode: u32| -> Result<()> {
        let dest = tree.join(to);
        std::fs::create_dir_all(dest.parent().unwrap())?;
        std::fs::copy(from, &dest).with_context(|| format!("copy {}", from.display()))?;
        set_mode(&dest, mode)
    };
    put(&release.join("tcpq"), "usr/bin/tcpq", 0o755)?;
    run(Command::new("strip").arg(tree.join("usr/bin/tcpq")))?;
    let mut man: Vec<PathBuf> = std::fs::read_dir(assets.join("man"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    man.sort();
    for page in &man {
        let name = page.file_name().unwrap().to_string_lossy().into_owned();
        put(page, &format!("usr/share/man/man1/{name}"), 0o644)?;
        run(Command::new("gzip")
            .args(["-9", "-n", "-f"])
            .arg(tree.join(format!("usr/share/man/man1/{name}"))))?;
    }
    let c = assets.join("completions");
    put(
        &c.join("tcpq.bash"),
        "usr/share/bash-completion/completions/tcpq",
        0o644,
    )?;
    put(
        &c.join("_tcpq"),
        "usr/share/zsh/vendor-completions/_tcpq",
        0o644,
    )?;
    put(
        &c.join("tcpq.fish"),
        "usr/share/fish/vendor_completions.d/tcpq.fish",
        0o644,
    )?;
    let deploy = root.join("deploy/systemd");
    put(
        &deploy.join("tcpq-export.service"),
        "lib/systemd/system/tcpq-export.service",
        0o644,
    )?;
    put(
        &deploy.join("tcpq-export.default"),
        "etc/default/tcpq-export",
        0o644,
    )?;
    let doc = tree.join("usr/share/doc/tcpq");
    std::fs::create_dir_all(&doc)?;
    std::fs::write(
        doc.join("copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: tcpq\n\nFiles: *\nLicense: MIT OR Apache-2.0\n",
    )?;

    let debian = tree.join("DEBIAN");
    std::fs::create_dir_all(&debian)?;
    let installed_kib = du_kib(&tree)?;
    std::fs::write(
        debian.join("control"),
        format!(
            "Package: {PACKAGE}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: tcpq developers <tcpq@localhost>\nInstalled-Size: {installed_kib}\nDepends: libc6\nSection: net\nPriority: optional\nDescription: why do TCP connections fail on this server?\n tcpq names the cause of failing TCP connections (accept and SYN queues,\n conntrack, ephemeral ports, slow accepts, stale upstreams) per listener,\n process and destination, with the evidence and the fix. eBPF (aya) with\n counters first. Includes the tcpq-export service: a Prometheus exporter.\n"
        ),
    )?;
    std::fs::write(debian.join("conffiles"), "/etc/default/tcpq-export\n")?;
    // systemd: reload units on install and removal; stop the exporter before removal. Nothing
    // is enabled or started on install (it attaches eBPF programs: the admin's decision).
    let script = |name: &str, body: &str| -> Result<()> {
        let p = debian.join(name);
        std::fs::write(&p, format!("#!/bin/sh\nset -e\n{body}exit 0\n"))?;
        set_mode(&p, 0o755)
    };
    let reload =
        "if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null || true; fi\n";
    script("postinst", reload)?;
    script(
        "prerm",
        "if [ -d /run/systemd/system ]; then systemctl stop tcpq-export.service >/dev/null 2>&1 || true; fi\n",
    )?;
    script(
        "postrm",
        &format!(
            "{reload}if [ \"$1\" = purge ] && [ -x /usr/bin/deb-systemd-helper ]; then deb-systemd-helper purge tcpq-export.service >/dev/null || true; fi\n"
        ),
    )?;
    let deb = out.join(format!("{PACKAGE}_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&tree)
        .arg(&deb))?;
    eprintln!("xtask: built {}", deb.display());
    crate::image::oci_archive(&out, &version, &tree.join("usr/bin/tcpq"))?;
    Ok(deb)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", p.display()))
}

/// The workspace version (Cargo.toml `[workspace.package] version`).
fn package_version(root: &Path) -> Result<String> {
    let toml = std::fs::read_to_string(root.join("Cargo.toml"))?;
    let v = toml
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| l.trim().strip_prefix("version = "))
        .map(|v| v.trim_matches('"').to_string());
    match v {
        Some(v) if !v.is_empty() => Ok(v),
        _ => bail!("no [workspace.package] version in Cargo.toml"),
    }
}

/// Size of a directory tree in KiB (the control file's Installed-Size).
fn du_kib(dir: &Path) -> Result<u64> {
    fn walk(p: &Path) -> std::io::Result<u64> {
        let m = std::fs::symlink_metadata(p)?;
        if m.is_dir() {
            std::fs::read_dir(p)?.try_fold(0, |acc, e| Ok(acc + walk(&e?.path())?))
        } else {
            Ok(m.len())
        }
    }
    Ok(walk(dir)?.div_ceil(1024))
}
