//! The tests' stand-in applications: Python snippets inside a namespace, read line by line.
use std::process::{Child, Command, Stdio};

use crate::Netns;

/// Runs a Python snippet inside a network namespace (the tests' stand-in application).
pub fn python_in(ns: &Netns, code: &str) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c", code])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3")
}

/// The next line of a child's stdout, read byte by byte so nothing after it is buffered away
/// (the child's later lines stay readable).
pub fn first_line(child: &mut std::process::Child) -> String {
    use std::io::Read as _;
    let out = child.stdout.as_mut().expect("child stdout is piped");
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while out.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8_lossy(&line).trim().to_string()
}

/// A silent upstream on 127.0.0.1:`port` in `ns`: a server that accepts and never answers, and a
/// client that sent a request and waits without a timeout. Returns (server, client, client pid).
pub fn silent_upstream(ns: &Netns, port: u16) -> (Child, Child, String) {
    let mut server = python_in(
        ns,
        &format!(
            "import socket,time\nl=socket.socket(); l.bind(('127.0.0.1',{port})); l.listen(16)\nprint('up',flush=True)\nc,_=l.accept()\ntime.sleep(30)"
        ),
    );
    assert_eq!(first_line(&mut server), "up");
    let mut client = python_in(
        ns,
        &format!(
            "import socket,os\ns=socket.socket(); s.connect(('127.0.0.1',{port})); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\nprint(os.getpid(),flush=True)\ns.recv(10)"
        ),
    );
    let pid = first_line(&mut client);
    (server, client, pid)
}
