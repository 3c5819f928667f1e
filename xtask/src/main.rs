//! `cargo xtask setup|build|test|demo`: the developer and CI entry points.
//!
//! setup installs, idempotently, what a fresh machine lacks: nightly's rust-src and
//! bpf-linker 0.10.0 (to build the kernel object), iproute2 and nftables (the labs), nginx and
//! wrk (the real-server test), prometheus (promtool and the server: the deploy/ tests), podman
//! and runc (dist's container image, run as the DaemonSet runs it), systemd-container (the
//! .deb's unit booted under systemd in systemd-nspawn).
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

mod bench;
mod dist;
mod image;
mod vm;

const BPF_LINKER_VERSION: &str = "0.10.0";
/// (binary, Debian package): iproute2 and nftables for the labs, nginx and wrk for the
/// real-server integration test, capsh for the minimum-capabilities test, tmux for the
/// end-to-end test of `tcpq top`, prometheus (promtool and the server) for the deploy/ tests,
/// podman and runc to load and run dist's container image (tests/tests/image.rs: runc, because
/// crun, podman's default, refuses cgroup hybrid mode), systemd-nspawn to run the .deb's unit
/// under a real systemd (tests/tests/systemd.rs; it depends on the same systemd version, so
/// installing it may upgrade systemd, which the container boots from /usr).
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    ("capsh", "libcap2-bin"),
    ("tmux", "tmux"),
    ("promtool", "prometheus"),
    ("podman", "podman"),
    ("runc", "runc"),
    ("systemd-nspawn", "systemd-container"),
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        // Every command but vm (which has its own) only prints the usage with --help: `bench
        // --help` must not start a benchmark.
        Some(cmd) if cmd != "vm" && args.iter().any(|a| a == "--help" || a == "-h") => {
            println!("{}", usage());
            return;
        }
        Some("setup") => setup(),
        Some("build") => setup().and_then(|_| build()),
        Some("test") => test(),
        Some("demo") => demo(),
        Some("dist") => setup().and_then(|_| dist::dist()).map(|_| ()),
        Some("bench") => soak_secs(&args).and_then(|soak_secs| {
            bench::bench(
                args.iter().any(|a| a == "--quick"),
                args.iter().any(|a| a == "--armed"),
                args.iter().any(|a| a == "--tables"),
                args.iter().any(|a| a == "--soak"),
                soak_secs,
            )
        }),
        Some("vm") => vm::vm(&args[1..]),
        _ => {
            eprintln!("{}", usage());
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn usage() -> String {
    format!(
        "usage: cargo xtask <setup|build|test|dist|bench|vm|demo>\n  setup  install nightly rust-src, bpf-linker {BPF_LINKER_VERSION}, iproute2, nftables, nginx, wrk, capsh, tmux, prometheus, podman, runc, systemd-container (idempotent)\n  build  build tcpq (and its kernel object)\n  dist   release binary, man pages, shell completions, a .deb with the tcpq-export systemd unit and an OCI image archive (localhost/tcpq:VERSION), in target/dist/\n  test   every test: unit tests, then the integration tests (as root: real programs in network namespaces)\n  bench  tcpq's cost under nginx + wrk, against bpftrace; rewrites BENCHMARKS.md (--quick: one short pair, prints only; --armed: only the cost while every family traces; --tables: only the big tables, rewriting their sections of BENCHMARKS.md; --soak [--soak-secs N]: only `tcpq export` for N s, default 600, while every lab comes and goes, prints only — the full run ends with it)\n  vm     --kernel 6.1|6.12 [-- CMD…]: run CMD (default: tcpq check and the listen, connect and conntrack tests) on Debian's kernel in qemu (TCG) over this machine's root\n  demo   reproduce an accept-queue overflow in a namespace and show `tcpq trace overflow` naming it (root)"
    )
}

/// `--soak-secs N` of `cargo xtask bench` (600 when absent).
fn soak_secs(args: &[String]) -> Result<u64> {
    let Some(i) = args.iter().position(|a| a == "--soak-secs") else {
        return Ok(600);
    };
    let value = args.get(i + 1).map(String::as_str).unwrap_or_default();
    match value.parse::<u64>() {
        Ok(n) if n >= 10 => Ok(n),
        _ => anyhow::bail!(
            "parse --soak-secs {value:?}: give whole seconds, at least 10 (e.g. --soak-secs 120)"
        ),
    }
}

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("spawn {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn output_of(cmd: &mut Command) -> Option<String> {
    cmd.stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Installs Debian `package` when `tool` is not on PATH (root only); Err says why not.
pub(crate) fn ensure_package(tool: &str, package: &str, why: &str) -> Result<(), String> {
    if on_path(tool) {
        return Ok(());
    }
    eprintln!("xtask: installing {package} for {why}…");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-q", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{tool} could not be installed (apt-get install {package})"
        ))
    }
}

fn on_path(bin: &str) -> bool {
    output_of(Command::new("sh").args(["-c", &format!("command -v {bin}")])).is_some()
}

fn is_root() -> bool {
    output_of(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

fn setup() -> Result<()> {
    // The eBPF crate builds with the installed nightly (LLVM matching bpf-linker 0.10).
    let toolchains =
        output_of(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        bail!("no nightly toolchain: the eBPF crate needs it (`rustup toolchain install nightly`)");
    }
    let installed = output_of(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let linker = output_of(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        run(Command::new("cargo").args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
        ]))?;
    }
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(bin, _)| !on_path(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!(
                "missing Debian packages {missing:?}: run `apt-get install -y {}` as root",
                missing.join(" ")
            );
        }
        run(Command::new("apt-get").arg("update").stdout(Stdio::null()))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null()))?;
        // The tests run their own Prometheus on a free loopback port: the package's service,
        // started by the install where systemd runs, is stopped and disabled.
        if missing.contains(&"prometheus") {
            let _ = Command::new("systemctl")
                .args(["disable", "--now", "prometheus"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    deploy_venv()?;
    eprintln!(
        "xtask: setup complete (nightly rust-src, bpf-linker {BPF_LINKER_VERSION}, iproute2, nftables, prometheus, podman, runc, systemd-container, kubernetes-validate {KUBERNETES_VALIDATE_VERSION})"
    );
    Ok(())
}

/// The PyPI package that validates deploy/kubernetes/ offline against the Kubernetes schemas.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// The virtualenv holding kubernetes-validate (tests/tests/kubernetes.rs runs its binary).
pub(crate) fn deploy_venv_dir() -> PathBuf {
    root_dir().join("target/deploy-venv")
}

/// Creates target/deploy-venv with kubernetes-validate pinned, unless it is there already
/// (installing Debian's python3-venv when the interpreter lacks the venv module).
fn deploy_venv() -> Result<()> {
    let venv = deploy_venv_dir();
    let tool = venv.join("bin/kubernetes-validate");
    let pip = venv.join("bin/pip");
    let have =
        output_of(Command::new(&pip).args(["show", "kubernetes-validate"])).is_some_and(|o| {
            o.lines()
                .any(|l| l == format!("Version: {KUBERNETES_VALIDATE_VERSION}"))
        });
    if tool.exists() && have {
        return Ok(());
    }
    if !pip.exists() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !made {
            if !is_root() {
                bail!(
                    "python3 cannot create a venv: run `apt-get install -y python3-venv` as root"
                );
            }
            run(Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "python3-venv"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null()))?;
            let _ = std::fs::remove_dir_all(&venv);
            run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        }
    }
    run(Command::new(&pip).args([
        "install",
        "--quiet",
        &format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"),
    ]))
}

fn build() -> Result<()> {
    run(Command::new("cargo")
        .current_dir(root_dir())
        .args(["build", "--package", "tcpq-user"]))
}

/// The tcpq binary of a cargo profile: "debug" (`build`, the integration tests' TCPQ_BIN) or
/// "release" (`dist`, `bench`).
fn tcpq_bin(profile: &str) -> PathBuf {
    root_dir().join("target").join(profile).join("tcpq")
}

fn test() -> Result<()> {
    setup()?;
    build()?;
    if !is_root() {
        eprintln!(
            "xtask: not root: the integration tests will report SKIPPED (they load eBPF programs)"
        );
    }
    // Unit tests of every host crate, then the integration tests one at a time (each loads the
    // programs and drives a lab; parallel labs would compete for 2 CPUs).
    run(Command::new("cargo").current_dir(root_dir()).args([
        "test",
        "--package",
        "tcpq-common",
        "--package",
        "tcpq-user",
        "--package",
        "tcpq-lab",
        "--package",
        "xtask",
    ]))?;
    // The package test installs the .deb of `dist` and the systemd test boots it (release build:
    // incremental after the first).
    dist::dist()?;
    run(Command::new("cargo")
        .current_dir(root_dir())
        .args(["test", "--package", "tcpq-tests", "--", "--test-threads=1"])
        .env("TCPQ_BIN", tcpq_bin("debug"))
        // setup installed every tool the tests use: a missing one is a failure, not a skip.
        .env("TCPQ_TOOLS_REQUIRED", "1"))?;
    eprintln!("xtask: all tests passed");
    Ok(())
}

fn demo() -> Result<()> {
    setup()?;
    build()?;
    if !is_root() {
        bail!("the demo loads eBPF programs and creates a network namespace: run it as root");
    }
    let bin = tcpq_bin("debug");
    println!("== tcpq check ==");
    run(Command::new(&bin).arg("check"))?;
    println!(
        "\n== tcpq trace overflow (10 s) while `tcpq lab overflow` fills a backlog-4 accept queue =="
    );
    let mut tracer = Command::new(&bin)
        .args([
            "trace",
            "overflow",
            "--duration",
            "10",
            "--lines-per-sec",
            "5",
        ])
        .spawn()
        .context("start tcpq trace overflow")?;
    thread::sleep(Duration::from_secs(2));
    let lab = Command::new(&bin)
        .args(["lab", "overflow", "--duration", "4"])
        .stdout(Stdio::null())
        .status();
    let status = tracer.wait().context("wait for tcpq")?;
    lab.context("run tcpq lab overflow")?;
    if !status.success() {
        bail!("tcpq trace overflow failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn packages_cover_the_lab_tools() {
        let bins: Vec<&str> = super::DEBIAN_PACKAGES.iter().map(|(b, _)| *b).collect();
        assert_eq!(
            bins,
            [
                "ip",
                "nft",
                "nginx",
                "wrk",
                "capsh",
                "tmux",
                "promtool",
                "podman",
                "runc",
                "systemd-nspawn"
            ]
        );
    }
}
