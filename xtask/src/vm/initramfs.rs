//! The guest's busybox initramfs: the early modules in dependency order, and the init that
//! mounts this machine's root over 9p with an overlay and runs the command.
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::Guest;
use crate::{output_of, root_dir, run};

/// Modules the initramfs loads before it can mount the host's root: virtio transport, 9p, and
/// overlay for a writable root (their dependencies come from modules.dep).
const EARLY_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// `modules` and their dependencies from modules.dep, dependencies first; built-in ones left
/// out. Paths are relative to the modules directory.
fn load_order(modules_dep: &str, builtin: &str, wanted: &[&str]) -> Result<Vec<String>> {
    let deps: Vec<(String, Vec<String>)> = modules_dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            (
                m.trim().to_string(),
                d.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect();
    let name_of = |path: &str| {
        Path::new(path)
            .file_name()
            .map(|f| {
                f.to_string_lossy()
                    .split('.')
                    .next()
                    .unwrap_or("")
                    .replace('-', "_")
            })
            .unwrap_or_default()
    };
    let builtin: HashSet<String> = builtin.lines().map(name_of).collect();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit(
        path: &str,
        deps: &[(String, Vec<String>)],
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(path.to_string()) {
            return;
        }
        if let Some((_, ds)) = deps.iter().find(|(m, _)| m == path) {
            for d in ds {
                visit(d, deps, seen, order);
            }
        }
        order.push(path.to_string());
    }
    for want in wanted {
        let want = want.replace('-', "_");
        if builtin.contains(&want) {
            continue;
        }
        let path = deps
            .iter()
            .find(|(m, _)| name_of(m) == want)
            .map(|(m, _)| m.clone())
            .with_context(|| format!("module {want} is neither built in nor in modules.dep"))?;
        visit(&path, &deps, &mut seen, &mut order);
    }
    Ok(order)
}

/// The guest's init: load the early modules, mount the host's root read-only over 9p under a
/// tmpfs overlay, the kernel filesystems tcpq needs, the guest's own modules over the host's,
/// then run the command in a chroot and print its status.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod "/modules/$m" || echo "vm: insmod $m failed"; done
mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288 hostroot /lower || { echo "vm: 9p mount failed"; echo "TCPQ_VM_EXIT=125"; poweroff -f; }
mount -t tmpfs -o size=75% tmpfs /rw
mkdir -p /rw/upper /rw/work
if ! mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot; then
  echo "vm: overlay failed: the root stays read-only, with tmpfs on /tmp and /run"
  mount --bind /lower /newroot
  mount -t tmpfs tmpfs /newroot/tmp
  mount -t tmpfs tmpfs /newroot/run
fi
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t tmpfs tmpfs /newroot/tmp
mount -t tmpfs tmpfs /newroot/run
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup
mount -t bpf bpf /newroot/sys/fs/bpf
mount -t tracefs tracefs /newroot/sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /newroot/sys/kernel/debug 2>/dev/null
mkdir -p "/newroot/lib/modules/$(uname -r)"
mount --bind "/lower@MODULES@" "/newroot/lib/modules/$(uname -r)"
cp /cmd.sh /newroot/tmp/vm-cmd.sh
cp /stage2.sh /newroot/tmp/vm-stage2.sh
# The command's root becomes pid 1's: the kernel's request_module() runs /sbin/modprobe from
# there (nf_conntrack, nf_tables… load on demand as on the host).
exec switch_root /newroot /bin/sh /tmp/vm-stage2.sh
"#;

/// Pid 1 after switch_root: the command in a shell of its own (its `set -e` ends that shell,
/// not init), then its status and power off.
const STAGE2: &str = r#"ip link set lo up
hostname tcpq-vm
export PATH=@REPO@/target/debug:$PATH TCPQ_BIN=@REPO@/target/debug/tcpq
cd @REPO@ && /bin/sh /tmp/vm-cmd.sh
echo "TCPQ_VM_EXIT=$?"
/bin/busybox poweroff -f
"#;

pub(super) fn build_initramfs(guest: &Guest, script: &str) -> Result<PathBuf> {
    let tree = guest.dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&tree);
    for d in ["bin", "proc", "sys", "dev", "modules"] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    let busybox = output_of(Command::new("sh").args(["-c", "command -v busybox"]))
        .context("busybox not found")?;
    std::fs::copy(busybox.trim(), tree.join("bin/busybox")).context("copy busybox")?;
    let dep = std::fs::read_to_string(guest.modules.join("modules.dep"))?;
    let builtin =
        std::fs::read_to_string(guest.modules.join("modules.builtin")).unwrap_or_default();
    let order = load_order(&dep, &builtin, EARLY_MODULES)?;
    let mut names = Vec::new();
    for m in &order {
        let src = guest.modules.join(m);
        let file = Path::new(m)
            .file_name()
            .context("module file name")?
            .to_string_lossy()
            .to_string();
        // busybox insmod reads plain .ko only (6.12 ships .ko.xz).
        let plain = file
            .trim_end_matches(".xz")
            .trim_end_matches(".zst")
            .to_string();
        let dst = tree.join("modules").join(&plain);
        let decompress = if file.ends_with(".xz") {
            Some("xz")
        } else if file.ends_with(".zst") {
            Some("zstd")
        } else {
            None
        };
        match decompress {
            Some(tool) => {
                let out = Command::new(tool)
                    .arg("-dc")
                    .arg(&src)
                    .output()
                    .with_context(|| format!("{tool} -dc {}", src.display()))?;
                if !out.status.success() {
                    bail!("{tool} -dc {} failed: install {tool}", src.display());
                }
                std::fs::write(&dst, out.stdout)?;
            }
            None => {
                std::fs::copy(&src, &dst)?;
            }
        }
        names.push(plain);
    }
    std::fs::write(tree.join("modules.order"), names.join("\n") + "\n")?;
    let lower_modules = guest
        .modules
        .canonicalize()
        .context("canonicalize the guest's modules")?;
    let repo = root_dir().canonicalize()?;
    let init = INIT
        .replace("@MODULES@", &lower_modules.to_string_lossy())
        .replace("@REPO@", &repo.to_string_lossy());
    let init_path = tree.join("init");
    std::fs::write(&init_path, init)?;
    std::fs::write(tree.join("cmd.sh"), format!("{script}\n"))?;
    std::fs::write(
        tree.join("stage2.sh"),
        STAGE2.replace("@REPO@", &repo.to_string_lossy()),
    )?;
    run(Command::new("chmod").arg("755").arg(&init_path))?;
    let initrd = guest.dir.join("initrd.cpio.gz");
    run(Command::new("sh").current_dir(&tree).args([
        "-c",
        &format!(
            "find . | cpio -o -H newc --quiet | gzip -1 > {}",
            initrd.display()
        ),
    ]))?;
    Ok(initrd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_order_puts_dependencies_first_and_skips_builtins() {
        let dep = "kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz\n\
                   kernel/net/9p/9pnet.ko.xz:\n\
                   kernel/fs/netfs/netfs.ko.xz:\n\
                   kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz\n";
        let builtin = "kernel/drivers/virtio/virtio_pci.ko\n";
        let order = load_order(dep, builtin, &["virtio_pci", "9pnet_virtio", "9p"]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/net/9p/9pnet.ko.xz",
                "kernel/net/9p/9pnet_virtio.ko.xz",
                "kernel/fs/netfs/netfs.ko.xz",
                "kernel/fs/9p/9p.ko.xz"
            ]
        );
        assert!(load_order(dep, builtin, &["overlay"]).is_err());
    }
}
