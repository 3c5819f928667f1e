//! The owner's own settings: the listen() backlog and the worker knobs of the program holding a
//! listener, in the syntax the operator edits. Pure (the table and the identification);
//! [`app_of_owners`] reads /proc. Used by every fix text that names an application setting.
use crate::snapshot::procs::Owner;

/// A server program tcpq knows the settings of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum App {
    Nginx,
    PhpFpm,
    Apache,
    Fluentd,
    Haproxy,
    Node,
    /// Tomcat (and Spring Boot's embedded Tomcat): the usual Java listener.
    Java,
    Redis,
    Gunicorn,
    Uwsgi,
    Postgres,
    Mysql,
    #[default]
    Other,
}

/// Interpreters whose comm names the interpreter, not the server it runs: the command line says.
fn is_interpreter(comm: &str) -> bool {
    comm.starts_with("python") || comm.starts_with("ruby") || comm == "java"
}

impl App {
    /// From `/proc/PID/comm` and, for an interpreter (`ruby`, `python3`, `java`), the command
    /// line (arguments joined by spaces). Workers rename themselves ("php-fpm: pool www",
    /// "gunicorn: worker"), and comm is truncated to 15 bytes: match on prefixes.
    pub fn identify(comm: &str, cmdline: &str) -> App {
        let c = comm.trim();
        let by_name = |s: &str| -> Option<App> {
            let base = s.rsplit('/').next().unwrap_or(s);
            Some(match base {
                b if b.starts_with("nginx") => App::Nginx,
                b if b.starts_with("php-fpm") || b.starts_with("php_fpm") => App::PhpFpm,
                b if b.starts_with("httpd") || b.starts_with("apache2") => App::Apache,
                b if b.starts_with("fluentd") || b.starts_with("td-agent") => App::Fluentd,
                b if b.starts_with("haproxy") => App::Haproxy,
                "node" | "nodejs" => App::Node,
                b if b.starts_with("redis-server") || b.starts_with("redis-serv") => App::Redis,
                b if b.starts_with("gunicorn") => App::Gunicorn,
                b if b.starts_with("uwsgi") => App::Uwsgi,
                "postgres" | "postmaster" => App::Postgres,
                "mysqld" | "mariadbd" => App::Mysql,
                _ => return None,
            })
        };
        if let Some(app) = by_name(c) {
            return app;
        }
        if is_interpreter(c) {
            // `ruby /usr/bin/fluentd …`, `python3 /usr/bin/gunicorn …`, `java … org.apache.catalina…`
            for arg in cmdline.split_whitespace().skip(1) {
                if let Some(app) = by_name(arg) {
                    return app;
                }
            }
            if c == "java" {
                return App::Java;
            }
        }
        App::Other
    }

    /// Who the fix addresses: "php-fpm", or "the application".
    pub fn name(self) -> &'static str {
        match self {
            App::Nginx => "nginx",
            App::PhpFpm => "php-fpm",
            App::Apache => "Apache",
            App::Fluentd => "fluentd",
            App::Haproxy => "HAProxy",
            App::Node => "Node",
            App::Java => "Tomcat",
            App::Redis => "Redis",
            App::Gunicorn => "gunicorn",
            App::Uwsgi => "uWSGI",
            App::Postgres => "PostgreSQL",
            App::Mysql => "MySQL",
            App::Other => "the application",
        }
    }

    /// Where this program sets the listen() backlog of `port` to `n`.
    pub fn backlog_setting(self, port: u16, n: u32) -> String {
        match self {
            App::Nginx => format!("nginx `listen {port} backlog={n};` (in the server block)"),
            App::PhpFpm => format!("php-fpm `listen.backlog = {n}` (in the pool file)"),
            App::Apache => format!("Apache `ListenBacklog {n}`"),
            App::Fluentd => format!("fluentd in_forward `backlog {n}` (in the <source> block)"),
            App::Haproxy => format!("HAProxy `backlog {n}` (in the frontend or on its bind line)"),
            App::Node => format!("Node `server.listen({{ port: {port}, backlog: {n} }})`"),
            App::Java => format!(
                "Tomcat Connector `acceptCount=\"{n}\"` (Spring Boot `server.tomcat.accept-count={n}`)"
            ),
            App::Redis => format!("Redis `tcp-backlog {n}` (redis.conf)"),
            App::Gunicorn => format!("gunicorn `--backlog {n}`"),
            App::Uwsgi => format!("uWSGI `--listen {n}` (`listen = {n}` in the ini)"),
            App::Postgres => format!(
                "PostgreSQL listens with 2 × max_connections: `max_connections = {}` (or a pooler such as pgbouncer in front)",
                n.div_ceil(2)
            ),
            App::Mysql => format!("MySQL `back_log = {n}` ([mysqld] in my.cnf)"),
            App::Other => {
                "the backlog argument it passes to listen() (its backlog or listen-queue setting)"
                    .into()
            }
        }
    }

    /// How this program adds workers (the processes or threads that call accept()).
    pub fn workers_setting(self) -> &'static str {
        match self {
            App::Nginx => {
                "nginx: `worker_connections` (events block) and `worker_processes`, with `worker_rlimit_nofile` to match"
            }
            App::PhpFpm => {
                "php-fpm: raise `pm.max_children` in the pool file (its log says 'server reached pm.max_children setting')"
            }
            App::Apache => "Apache: raise `MaxRequestWorkers` (and `ServerLimit` to match)",
            App::Fluentd => "fluentd: more `workers` in the <system> block",
            App::Haproxy => "HAProxy: `maxconn` (global and frontend) and `nbthread`",
            App::Node => {
                "Node: one process runs one event loop: run more (the cluster module or more instances) and look for a blocked event loop"
            }
            App::Java => {
                "Tomcat: `maxThreads` and `maxConnections` on the Connector (Spring Boot `server.tomcat.threads.max`, `server.tomcat.max-connections`)"
            }
            App::Redis => {
                "Redis: one thread serves every client: look for slow commands (`SLOWLOG GET`) and `maxclients`"
            }
            App::Gunicorn => "gunicorn: more `--workers` (or `--threads`)",
            App::Uwsgi => "uWSGI: more `--processes` (or `--threads`)",
            App::Postgres => {
                "PostgreSQL: a backend per connection: `max_connections`, or a pooler (pgbouncer) in front"
            }
            App::Mysql => "MySQL: `max_connections` and `thread_cache_size`",
            App::Other => {
                "raise the application's worker count (the processes or threads that call accept()) or its connection limit"
            }
        }
    }
}

impl App {
    /// How this program raises the cap it hit when it accepts connections and drops them at
    /// once (`connection_limit`): its own connection limit, and the descriptor limit behind it.
    /// `held`: the ESTABLISHED connections it held then; `nofile`: its soft RLIMIT_NOFILE.
    pub fn connection_limit_fixes(self, held: u64, nofile: Option<u64>) -> Vec<String> {
        let limit_now = nofile
            .map(|n| format!(" (the process's limit now: {n})"))
            .unwrap_or_default();
        match self {
            App::Nginx => vec![
                format!(
                    "nginx: raise `worker_connections` in the events block (a worker's cap on every connection it holds — clients, upstreams and its listening sockets; it held {held} clients here; at most worker_processes × worker_connections in all); its error log says 'worker_connections are not enough'"
                ),
                format!(
                    "nginx: set `worker_rlimit_nofile` (main context) to at least 2 × worker_connections — a proxied request holds two descriptors{limit_now}"
                ),
            ],
            _ => vec![
                format!(
                    "{}: raise its connection cap (max connections / max clients) — it accepts and closes at once when full (it held {held} here)",
                    self.name()
                ),
                format!(
                    "raise its descriptor limit with it: `ulimit -n` in its start script, or `LimitNOFILE=` in its systemd unit{limit_now}"
                ),
            ],
        }
    }

    /// Where this program, as a client, bounds the wait for an upstream's answer.
    pub fn client_timeout_setting(self) -> &'static str {
        match self {
            App::Nginx => {
                "nginx: `proxy_read_timeout` / `fastcgi_read_timeout` / `uwsgi_read_timeout` (default 60s) for the upstream, with `proxy_next_upstream` to try another"
            }
            App::PhpFpm => {
                "PHP: `default_socket_timeout`, cURL `CURLOPT_TIMEOUT`, PDO `PDO::ATTR_TIMEOUT`, mysqlnd `mysqlnd.net_read_timeout`"
            }
            App::Apache => "Apache: `ProxyTimeout` (or `timeout=` on the `ProxyPass`)",
            App::Fluentd => "fluentd out_forward: `send_timeout` and `ack_response_timeout`",
            App::Haproxy => "HAProxy: `timeout server`",
            App::Node => {
                "Node: `socket.setTimeout()`, the `timeout` of http.request, `AbortSignal.timeout()` for fetch"
            }
            App::Java => {
                "Java: JDBC `socketTimeout`, HttpClient read/response timeouts, `Socket.setSoTimeout()`"
            }
            App::Gunicorn | App::Uwsgi => {
                "Python: `requests` `timeout=(connect, read)`, urllib3 `Timeout(read=…)`, `socket.settimeout()`"
            }
            App::Redis | App::Postgres | App::Mysql | App::Other => {
                "the client's read timeout on this upstream (e.g. libcurl `CURLOPT_TIMEOUT`, Python requests `timeout=`, Go `http.Client.Timeout`, JDBC `socketTimeout`, `SO_RCVTIMEO`)"
            }
        }
    }
}

/// A listening socket keeps the backlog it got from listen() (`sk_max_ack_backlog`, set by
/// `__inet_listen_sk()`); neither a new setting nor a new somaxconn reaches it until then.
pub fn relisten(app: App) -> &'static str {
    match app {
        App::Nginx => {
            "then make it call listen() again: `nginx -s reload` does for a changed backlog= (a running socket keeps the backlog it got at listen(), also after a sysctl change)"
        }
        _ => {
            "then restart it so it calls listen() again (a running socket keeps the backlog it got at listen(), also after a sysctl change)"
        }
    }
}

/// The first owner tcpq knows the settings of (nginx's master and workers, php-fpm's pool…);
/// reads the command line of interpreters.
pub fn app_of_owners(owners: &[Owner]) -> App {
    owners
        .iter()
        .map(|o| {
            let cmdline = if is_interpreter(&o.comm) {
                std::fs::read(format!("/proc/{}/cmdline", o.pid))
                    .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            App::identify(&o.comm, &cmdline)
        })
        .find(|a| *a != App::Other)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_programs_by_comm_and_interpreter_command_line() {
        for (comm, cmd, app) in [
            ("nginx", "", App::Nginx),
            ("php-fpm8.2", "", App::PhpFpm),
            ("php-fpm", "", App::PhpFpm),
            ("httpd", "", App::Apache),
            ("apache2", "", App::Apache),
            ("fluentd", "", App::Fluentd),
            (
                "ruby",
                "/usr/bin/ruby -Eascii-8bit:ascii-8bit /usr/bin/fluentd --under-supervisor",
                App::Fluentd,
            ),
            ("haproxy", "", App::Haproxy),
            ("node", "", App::Node),
            (
                "java",
                "java -classpath bootstrap.jar org.apache.catalina.startup.Bootstrap start",
                App::Java,
            ),
            ("redis-server", "", App::Redis),
            ("gunicorn", "", App::Gunicorn),
            (
                "python3",
                "/usr/bin/python3 /usr/local/bin/gunicorn app:app",
                App::Gunicorn,
            ),
            ("uwsgi", "", App::Uwsgi),
            ("postgres", "", App::Postgres),
            ("mysqld", "", App::Mysql),
            ("tcpq-lab", "", App::Other),
            ("python3", "python3 server.py", App::Other),
            // A name in the arguments of a non-interpreter says nothing.
            ("myserver", "myserver --like nginx", App::Other),
        ] {
            assert_eq!(App::identify(comm, cmd), app, "{comm} {cmd}");
        }
    }

    #[test]
    fn each_owner_gets_its_own_backlog_and_worker_settings() {
        let b = |a: App| a.backlog_setting(8080, 1024);
        assert_eq!(
            b(App::Nginx),
            "nginx `listen 8080 backlog=1024;` (in the server block)"
        );
        assert!(b(App::PhpFpm).contains("`listen.backlog = 1024`"));
        assert!(b(App::Apache).contains("`ListenBacklog 1024`"));
        assert!(b(App::Fluentd).contains("in_forward `backlog 1024`"));
        assert!(b(App::Haproxy).contains("`backlog 1024`"));
        assert!(b(App::Node).contains("server.listen({ port: 8080, backlog: 1024 })"));
        assert!(b(App::Java).contains("acceptCount=\"1024\""));
        assert!(b(App::Redis).contains("`tcp-backlog 1024`"));
        assert!(b(App::Gunicorn).contains("`--backlog 1024`"));
        assert!(b(App::Uwsgi).contains("`--listen 1024`"));
        assert!(b(App::Postgres).contains("`max_connections = 512`"));
        assert!(b(App::Mysql).contains("`back_log = 1024`"));
        assert!(b(App::Other).contains("listen()") && !b(App::Other).contains("nginx"));
        assert!(App::PhpFpm.workers_setting().contains("pm.max_children"));
        assert!(App::Apache.workers_setting().contains("MaxRequestWorkers"));
        assert!(App::Gunicorn.workers_setting().contains("--workers"));
        assert!(App::Uwsgi.workers_setting().contains("--processes"));
        assert!(App::Nginx.workers_setting().contains("worker_connections"));
        assert!(!App::Other.workers_setting().contains("php"));
        assert!(relisten(App::Nginx).contains("nginx -s reload"));
        assert!(relisten(App::Other).contains("restart it so it calls listen() again"));
    }

    #[test]
    fn first_known_owner_wins() {
        let o = |pid, comm: &str| Owner {
            pid,
            comm: comm.into(),
        };
        assert_eq!(app_of_owners(&[]), App::Other);
        assert_eq!(
            app_of_owners(&[o(1, "sh"), o(2, "php-fpm8.2")]),
            App::PhpFpm
        );
    }

    #[test]
    fn client_timeouts_in_the_clients_syntax() {
        assert!(
            App::Nginx
                .client_timeout_setting()
                .contains("proxy_read_timeout")
        );
        assert!(
            App::PhpFpm
                .client_timeout_setting()
                .contains("default_socket_timeout")
        );
        assert!(
            App::Haproxy
                .client_timeout_setting()
                .contains("timeout server")
        );
        assert!(App::Java.client_timeout_setting().contains("socketTimeout"));
        assert!(App::Other.client_timeout_setting().contains("read timeout"));
    }
}
