//! `cargo xtask vm --kernel 6.1|6.12 [-- CMD…]`: runs CMD (default: `tcpq check`, then the
//! integration tests that prove each family) on Debian's own kernel in qemu, with this
//! machine's root filesystem shared read-only over 9p and a tmpfs overlay for writes, so the
//! binaries built here run there unchanged. Returns CMD's exit status.
//!
//! Facts of these machines (DESIGN.md, "Other kernels"): /dev/kvm is kvm-pvm, which boots only
//! PVM-built guests, so stock kernels run under TCG; the Debian kernels need virtio, 9p and
//! overlay as modules, loaded from a small busybox initramfs.
use std::{
    collections::HashSet,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{ensure_package, is_root, output_of, root_dir, run};

/// The kernels of the matrix: what `--kernel` accepts, and the Debian 12 package names that
/// carry them (the newest one apt knows is taken).
const KERNELS: &[(&str, &str)] = &[
    ("6.1", r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$"),
    ("6.12", r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$"),
];

/// Modules the initramfs loads before it can mount the host's root: virtio transport, 9p, and
/// overlay for a writable root (their dependencies come from modules.dep).
const EARLY_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// The integration tests run by default: the ones whose counts must equal the kernel's.
const DEFAULT_TESTS: &[&str] = &["listen", "connect", "conntrack", "accept"];

/// Under TCG a test run is 10-20× slower than here; past this the guest is stopped.
const VM_TIMEOUT: Duration = Duration::from_secs(45 * 60);

/// What the guest's init prints last: CMD's exit status.
const EXIT_MARK: &str = "TCPQ_VM_EXIT=";

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

/// `--matrix`: the default command on every kernel of KERNELS and on this machine's, then the
/// compatibility table in README.md (between its matrix markers) rewritten.
fn matrix() -> Result<()> {
    prepare()?;
    let script = default_script(false)?;
    let mut rows = Vec::new();
    for (kernel, _) in KERNELS {
        let guest = fetch_kernel(kernel)?;
        let initrd = build_initramfs(&guest, &script)?;
        let (status, console) = boot(&guest, &initrd)?;
        rows.push(MatrixRow::from_console(&guest.release, status, &console));
    }
    eprintln!("xtask: vm: the same on this machine's kernel…");
    let path = format!(
        "{}:{}",
        root_dir().join("target/debug").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .current_dir(root_dir())
        .env("PATH", path)
        .env("TCPQ_BIN", crate::tcpq_bin("debug"))
        .args(["-c", &script])
        .stderr(Stdio::inherit())
        .output()
        .context("run the matrix script here")?;
    let here: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let release = output_of(Command::new("uname").arg("-r")).unwrap_or_default();
    rows.push(MatrixRow::from_console(
        &format!("{} (this machine)", release.trim()),
        out.status.code().unwrap_or(1),
        &here,
    ));
    let table = matrix_table(&rows);
    println!("{table}");
    let readme = root_dir().join("README.md");
    let text = std::fs::read_to_string(&readme)?;
    let (start, end) = ("<!-- matrix:start -->", "<!-- matrix:end -->");
    let (Some(a), Some(b)) = (text.find(start), text.find(end)) else {
        bail!("README.md has no {start} … {end} markers for the table");
    };
    let new = format!("{}{start}\n{table}{}", &text[..a], &text[b..]);
    std::fs::write(&readme, new)?;
    eprintln!("xtask: vm: README.md's compatibility table rewritten");
    if rows.iter().any(|r| r.status != 0) {
        bail!("a kernel of the matrix failed (see the table)");
    }
    Ok(())
}

/// What one kernel of the matrix showed.
#[derive(Debug, PartialEq)]
struct MatrixRow {
    kernel: String,
    status: i32,
    /// (hooks attached, hooks loaded) per `tcpq check --json`.
    attached: (usize, usize),
    /// Refused hooks: "program: reason".
    refused: Vec<String>,
    /// kprobes / fentry as `tcpq check` found them.
    kprobes: String,
    fentry: String,
    /// "family backend" per `tcpq check --json`'s `backends`.
    backends: Vec<String>,
    /// (test file, passed, failed).
    tests: Vec<(String, u64, u64)>,
}

impl MatrixRow {
    /// Reads the markers the matrix script prints (see `default_script`).
    fn from_console(kernel: &str, status: i32, console: &[String]) -> Self {
        let mut row = MatrixRow {
            kernel: kernel.to_string(),
            status,
            attached: (0, 0),
            refused: Vec::new(),
            kprobes: "?".into(),
            fentry: "?".into(),
            backends: Vec::new(),
            tests: Vec::new(),
        };
        let mut current = None;
        for line in console {
            // The console's first line after boot carries the firmware's escape sequences.
            let marked = |mark: &str| line.find(mark).map(|i| line[i + mark.len()..].trim());
            let line = line.trim();
            if let Some(json) = marked(CHECK_MARK) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
                    continue;
                };
                let hooks = v["hooks"].as_array().cloned().unwrap_or_default();
                row.attached = (
                    hooks.iter().filter(|h| h["state"] == "attached").count(),
                    hooks.len(),
                );
                row.refused = hooks
                    .iter()
                    .filter(|h| h["state"] != "attached")
                    .map(|h| {
                        format!(
                            "{}: {}",
                            h["program"].as_str().unwrap_or("?"),
                            h["detail"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                // "available (not needed)", "unavailable: CONFIG_KPROBES unset …" → one word.
                let short = |x: &serde_json::Value| {
                    x.as_str()
                        .map(|s| s.split([' ', '(', ':']).next().unwrap_or(s).to_string())
                        .or_else(|| x.as_bool().map(|b| if b { "yes" } else { "no" }.into()))
                        .unwrap_or_else(|| "?".into())
                };
                row.kprobes = short(&v["kprobes"]);
                row.fentry = short(&v["fentry"]);
                row.backends = v["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| {
                        format!(
                            "{} {}",
                            b["family"].as_str().unwrap_or("?"),
                            b["backend"].as_str().unwrap_or("?")
                        )
                    })
                    .collect();
            } else if let Some(name) = marked(TEST_MARK) {
                current = Some(name.trim().to_string());
            } else if let (Some(name), Some(rest)) = (&current, line.strip_prefix("test result: "))
            {
                let count = |word: &str| {
                    rest.split(';')
                        .find_map(|p| p.trim().strip_suffix(word))
                        .and_then(|n| n.trim().rsplit(' ').next())
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                row.tests
                    .push((name.clone(), count("passed"), count("failed")));
                current = None;
            }
        }
        row
    }
}

fn matrix_table(rows: &[MatrixRow]) -> String {
    let mut t = String::from(
        "| kernel | hooks attached | backend | kprobes / fentry | integration tests (passed/failed) | refused |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let tests = if r.tests.is_empty() {
            format!("none ran (exit status {})", r.status)
        } else {
            r.tests
                .iter()
                .map(|(n, p, f)| format!("{n} {p}/{f}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let refused = if r.refused.is_empty() {
            "none".to_string()
        } else {
            r.refused.join("; ")
        };
        let backends = if r.backends.is_empty() {
            "?".to_string()
        } else {
            r.backends.join(", ")
        };
        t.push_str(&format!(
            "| {} | {}/{} | {backends} | {} / {} | {tests} | {refused} |\n",
            r.kernel, r.attached.0, r.attached.1, r.kprobes, r.fentry,
        ));
    }
    t
}

/// Marker lines of the matrix script.
const CHECK_MARK: &str = "TCPQ_CHECK_JSON=";
const TEST_MARK: &str = "TCPQ_TESTS=";

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

fn fetch_kernel(kernel: &str) -> Result<Guest> {
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

fn build_initramfs(guest: &Guest, script: &str) -> Result<PathBuf> {
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

/// The default command: `tcpq check`, then the count-vs-kernel integration tests, built here
/// first (the guest only runs binaries).
/// `stop_at_failure`: the first failure ends it (a plain run); else every test file runs and
/// the status is the last failure's (the matrix), with marker lines for `MatrixRow`.
fn default_script(stop_at_failure: bool) -> Result<String> {
    let mut lines = if stop_at_failure {
        vec!["set -e".to_string(), "tcpq check".to_string()]
    } else {
        vec![
            "status=0".to_string(),
            format!("echo \"{CHECK_MARK}$(tcpq check --json | tr -d '\\n')\""),
        ]
    };
    for test in DEFAULT_TESTS {
        let exe = test_executable(test)?;
        lines.push(format!("echo '{TEST_MARK}{test}'"));
        lines.push(format!("{} --test-threads=1", exe.display()));
        if !stop_at_failure {
            lines.push("rc=$?; [ $rc -eq 0 ] || status=$rc".to_string());
        }
    }
    if !stop_at_failure {
        lines.push("exit $status".to_string());
    }
    Ok(lines.join("\n"))
}

/// Builds integration test file `name` and returns its executable.
fn test_executable(name: &str) -> Result<PathBuf> {
    let out = Command::new("cargo")
        .current_dir(root_dir())
        .args([
            "test",
            "--package",
            "tcpq-tests",
            "--test",
            name,
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == name)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("no executable for integration test {name}"))
}

/// Boots the guest and echoes its console; CMD's exit status and the console's lines.
fn boot(guest: &Guest, initrd: &Path) -> Result<(i32, Vec<String>)> {
    eprintln!(
        "xtask: vm: booting {} under TCG (/dev/kvm here is kvm-pvm: stock kernels hang on it)…",
        guest.release
    );
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "4G",
        ])
        .args(["-nographic", "-no-reboot", "-nic", "none", "-kernel"])
        .arg(&guest.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet rdinit=/init",
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("start qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut console = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            eprintln!("vm| {}", line.trim_end());
            if let Some(code) = line.trim().strip_prefix(EXIT_MARK) {
                let _ = tx.send(code.trim().parse::<i32>().unwrap_or(126));
            }
            console.push(line);
        }
        console
    });
    let started = Instant::now();
    let status = loop {
        if let Ok(code) = rx.try_recv() {
            break Some(code);
        }
        if child.try_wait()?.is_some() {
            // The mark may still be in the pipe.
            break rx.recv_timeout(Duration::from_secs(1)).ok();
        }
        if started.elapsed() > VM_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the guest did not finish within {VM_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(200));
    };
    // poweroff -f follows the mark; give qemu a moment, then make sure it is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let console = reader.join().unwrap_or_default();
    let status = status.context(
        "the guest stopped before reporting the command's status (see its console above)",
    )?;
    Ok((status, console))
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

    #[test]
    fn matrix_row_reads_the_markers() {
        let console: Vec<String> = [
            "vm| noise",
            r#"Booting from ROM..\x1b[2JTCPQ_CHECK_JSON={"kernel":"6.1.0-57-amd64","kprobes":"available (not needed)","fentry":"available","backends":[{"family":"listen","backend":"fentry"},{"family":"drop","backend":"tracepoint"}],"hooks":[{"program":"a","state":"attached","detail":"x"},{"program":"b","state":"unavailable","detail":"refused: why"}]}"#,
            "TCPQ_TESTS=listen",
            "running 13 tests",
            "test result: ok. 13 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 80.1s",
            "TCPQ_TESTS=connect",
            "test result: FAILED. 7 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let row = MatrixRow::from_console("6.1.0-57-amd64", 101, &console);
        assert_eq!(row.attached, (1, 2));
        assert_eq!(row.refused, ["b: refused: why"]);
        assert_eq!(row.kprobes, "available");
        let host = MatrixRow::from_console(
            "6.18",
            0,
            &[r#"TCPQ_CHECK_JSON={"kprobes":"unavailable: CONFIG_KPROBES unset","fentry":"refused: EPERM","hooks":[]}"#.to_string()],
        );
        assert_eq!(
            (host.kprobes.as_str(), host.fentry.as_str()),
            ("unavailable", "refused")
        );
        assert_eq!(
            row.tests,
            [("listen".to_string(), 13, 0), ("connect".to_string(), 7, 2)]
        );
        let t = matrix_table(&[row]);
        assert!(
            t.contains("| 6.1.0-57-amd64 | 1/2 | listen fentry, drop tracepoint |"),
            "{t}"
        );
        assert!(t.contains("listen 13/0, connect 7/2"), "{t}");
        let empty = matrix_table(&[MatrixRow::from_console("x", 125, &[])]);
        assert!(empty.contains("none ran (exit status 125)"), "{empty}");
    }

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
