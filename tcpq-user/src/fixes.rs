//! How every finding spells a sysctl change: the command for the namespace the value lives in,
//! and how to make it last there. Pure and unit-tested.
//!
//! Most of tcpq's sysctls are per network namespace (somaxconn, tcp_*, ip_local_port_range,
//! nf_conntrack_tcp_timeout_*): a container has its own, which /etc/sysctl.d on the host never
//! reaches — it is set where the namespace is created. A few are global (nf_conntrack_max,
//! fs.file-max): read-only inside a container's namespace, so the command runs on the host.

/// Per-namespace sysctls Kubernetes allows a pod to set without a kubelet allowlist (its "safe"
/// set); the others need `--allowed-unsafe-sysctls`.
const KUBERNETES_SAFE: &[&str] = &[
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ping_group_range",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_fin_timeout",
];

/// `key` set to `value` in the namespace `prefix` enters ("" = the host's own, or an
/// `nsenter --net=… ` prefix), with `note` after the command, then how to persist it.
pub fn sysctl_fix(prefix: &str, key: &str, value: &str, note: &str) -> String {
    let note = if note.is_empty() {
        String::new()
    } else {
        format!("{note}; ")
    };
    let shown = if value.contains(' ') {
        format!("\"{value}\"")
    } else {
        value.to_string()
    };
    if prefix.is_empty() {
        return format!(
            "sysctl -w {key}={shown}   # {note}persist: echo '{key} = {value}' > /etc/sysctl.d/90-tcpq.conf"
        );
    }
    let kubernetes = if KUBERNETES_SAFE.contains(&key) {
        format!("Kubernetes: the pod's securityContext.sysctls (name {key})")
    } else {
        format!(
            "Kubernetes: the pod's securityContext.sysctls (name {key}), allowed on the node with the kubelet's --allowed-unsafe-sysctls={key}"
        )
    };
    format!(
        "{prefix}sysctl -w {key}={shown}   # {note}this namespace's own value: /etc/sysctl.d does not reach it — persist it where the namespace is made: docker run --sysctl {key}={shown}; {kubernetes}; or the script that runs ip netns add"
    )
}

/// A global sysctl (`nf_conntrack_max`, `fs.file-max`): one command on the host, whichever
/// namespace needs it (`in_container`: the finding is about another namespace, where the
/// sysctl is read-only).
pub fn global_sysctl_fix(key: &str, value: &str, note: &str, in_container: bool) -> String {
    let mut fix = sysctl_fix("", key, value, note);
    if in_container {
        fix.push_str(
            " (on the host: global, read-only inside a container's namespace, it applies to every namespace)",
        );
    }
    fix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_persists_in_sysctl_d() {
        assert_eq!(
            sysctl_fix("", "net.core.somaxconn", "1024", ""),
            "sysctl -w net.core.somaxconn=1024   # persist: echo 'net.core.somaxconn = 1024' > /etc/sysctl.d/90-tcpq.conf"
        );
        let f = sysctl_fix(
            "",
            "net.ipv4.ip_local_port_range",
            "1024 65535",
            "more ports",
        );
        assert!(
            f.starts_with("sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"   # more ports; persist: echo 'net.ipv4.ip_local_port_range = 1024 65535'"),
            "{f}"
        );
    }

    #[test]
    fn a_container_persists_where_its_namespace_is_made() {
        let f = sysctl_fix(
            "nsenter --net=/proc/42/ns/net ",
            "net.core.somaxconn",
            "1024",
            "",
        );
        assert!(
            f.starts_with("nsenter --net=/proc/42/ns/net sysctl -w net.core.somaxconn=1024"),
            "{f}"
        );
        assert!(!f.contains("/etc/sysctl.d/90"), "{f}");
        assert!(
            f.contains("docker run --sysctl net.core.somaxconn=1024"),
            "{f}"
        );
        assert!(
            f.contains("--allowed-unsafe-sysctls=net.core.somaxconn"),
            "{f}"
        );
        let safe = sysctl_fix("nsenter --net=/x ", "net.ipv4.tcp_syncookies", "1", "");
        assert!(
            safe.contains("securityContext.sysctls") && !safe.contains("unsafe"),
            "{safe}"
        );
    }

    #[test]
    fn a_global_sysctl_runs_on_the_host() {
        let f = global_sysctl_fix("net.netfilter.nf_conntrack_max", "262144", "memory", true);
        assert!(
            f.starts_with("sysctl -w net.netfilter.nf_conntrack_max=262144"),
            "{f}"
        );
        assert!(!f.contains("nsenter"), "{f}");
        assert!(f.contains("read-only inside a container"), "{f}");
        assert!(!global_sysctl_fix("fs.file-max", "1", "", false).contains("container"));
    }
}
